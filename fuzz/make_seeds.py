#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/ from the real payloads in tests/fixtures (docs/fuzzing.md).

The seeds are committed; run this again only when the fixtures change. Output is
deterministic: the same fixtures give the same files.
"""

import hashlib
import hmac
import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
STRIPE = ROOT / "tests/fixtures/stripe"
DIALOGFLOW = ROOT / "crates/fulfillment/tests/fixtures"
SEEDS = ROOT / "fuzz/seeds"

SECRET = "whsec_fuzz_seed"
NOW = 1_700_000_000

# objects/<name>.openapi-fixtures3.json -> the event type that carries such an object.
OBJECT_EVENTS = {
    "charge": "charge.refunded",
    "checkout.session": "checkout.session.completed",
    "customer": "customer.updated",
    "dispute": "charge.dispute.created",
    "entitlements.active_entitlement_summary": "entitlements.active_entitlement_summary.updated",
    "invoice": "invoice.paid",
    "payment_method": "payment_method.attached",
    "subscription": "customer.subscription.updated",
}


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def event(event_type: str, data: dict, number: int) -> dict:
    return {
        "id": f"evt_fuzz_seed_{number}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": NOW,
        "livemode": False,
        "type": event_type,
        "data": data,
    }


def stripe_events() -> dict[str, bytes]:
    """Every real event: the complete ones as they are, the others wrapped in an envelope."""
    events = {}
    for path in sorted((STRIPE / "complete").glob("*.json")):
        events[path.stem] = compact(json.loads(path.read_text()))
    for number, path in enumerate(sorted((STRIPE / "data-only").glob("*.json"))):
        event_type = path.name.split(".data-only")[0]
        event_type = event_type.replace(".subscription_mode", "")
        events[path.stem] = compact(event(event_type, json.loads(path.read_text()), number))
    for number, path in enumerate(sorted((STRIPE / "objects").glob("*.json")), start=100):
        name = path.name.split(".openapi-fixtures3")[0]
        if name in OBJECT_EVENTS:
            data = {"object": json.loads(path.read_text())}
            events[path.stem] = compact(event(OBJECT_EVENTS[name], data, number))
    return events


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_case(header: str, secrets: str, now: int, tolerance: int, body: bytes) -> bytes:
    return f"{header}\n{secrets}\n{now}\n{tolerance}\n".encode() + body


def signature_seeds(events: dict[str, bytes]) -> dict[str, bytes]:
    seeds = {}
    for name, body in list(events.items())[:6]:
        header = f"t={NOW},v1={sign(SECRET, str(NOW), body)}"
        seeds[f"signed-{name}"] = signature_case(header, SECRET, NOW, 300, body)
    body = events["invoice.paid.stripe-sync-engine"]
    good = sign(SECRET, str(NOW), body)
    old = sign("whsec_old", str(NOW), body)
    cases = {
        "rolling-secret": (f"t={NOW},v1={old},v1={good}", f"whsec_old, {SECRET}", NOW, 300),
        "v0-beside-v1": (f"t={NOW},v0={good},v1={good}", SECRET, NOW, 300),
        "v0-only": (f"t={NOW},v0={good}", SECRET, NOW, 300),
        "uppercase-hex": (f"t={NOW},v1={good.upper()}", SECRET, NOW, 300),
        "spaces": (f" t={NOW} , v1={good} ", SECRET, NOW, 300),
        "leading-zeros": (f"t=0{NOW},v1={sign(SECRET, '0' + str(NOW), body)}", SECRET, NOW, 300),
        "too-old": (f"t={NOW - 301},v1={sign(SECRET, str(NOW - 301), body)}", SECRET, NOW, 300),
        "at-the-tolerance": (f"t={NOW - 300},v1={sign(SECRET, str(NOW - 300), body)}", SECRET, NOW, 300),
        "in-the-future": (f"t={NOW + 301},v1={sign(SECRET, str(NOW + 301), body)}", SECRET, NOW, 300),
        "wrong-secret": (f"t={NOW},v1={old}", SECRET, NOW, 300),
        "repeated-t": (f"t={NOW},t={NOW},v1={good}", SECRET, NOW, 300),
        "negative-t": (f"t=-{NOW},v1={good}", SECRET, NOW, 300),
        "no-equals": (f"t={NOW},v1", SECRET, NOW, 300),
        "nine-signatures": (f"t={NOW}" + f",v1={old}" * 8 + f",v1={good}", SECRET, NOW, 300),
        "empty": ("", SECRET, NOW, 300),
        "huge-tolerance": (f"t=0,v1={sign(SECRET, '0', body)}", SECRET, NOW, 2**64 - 1),
    }
    for name, (header, secrets, now, tolerance) in cases.items():
        seeds[name] = signature_case(header, secrets, now, tolerance, body)
    return seeds


def envelope_seeds(events: dict[str, bytes]) -> dict[str, bytes]:
    seeds = dict(events)
    seeds["connect-account"] = compact(
        {"id": "evt_1", "type": "invoice.paid", "created": 1, "livemode": True, "api_version": None,
         "account": "acct_9", "data": {"object": {}}})
    seeds["repeated-id"] = b'{"id":"evt_1","id":"evt_2","type":"a.b","created":1,"livemode":false}'
    seeds["escaped-control"] = b'{"id":"evt_\\u0007","type":"a.b","created":1,"livemode":false}'
    seeds["long-type"] = compact({"id": "evt_1", "type": "a" * 256, "created": 1, "livemode": False})
    return seeds


def dialogflow_seeds() -> dict[str, bytes]:
    seeds = {}
    for path in sorted(DIALOGFLOW.glob("*.json")):
        request = json.loads(path.read_text())
        seeds[path.stem] = compact(request)
    es = json.loads((DIALOGFLOW / "es-webhook-request.json").read_text())
    es["queryResult"]["parameters"] = {"userId": 42.0, "amount": 500.0, "credits": "12", "plan": ["pro"]}
    es["queryResult"]["outputContexts"].append(
        {"name": es["session"] + "/contexts/tollgate-billing", "lifespanCount": 4,
         "parameters": {"user_id": "u_ctx"}})
    es["originalDetectIntentRequest"] = None
    seeds["es-numbers-and-own-context"] = compact(es)
    seeds["cx-minimal"] = compact({"sessionInfo": {"session": "projects/p/locations/l/agents/a/sessions/s"}})
    cx = json.loads((DIALOGFLOW / "cx-webhook-request.json").read_text())
    cx["payload"] = {"user": {"user_id": " u_app "}}
    cx["fulfillmentInfo"] = {"tag": "  "}
    seeds["cx-payload-user-blank-tag"] = compact(cx)
    seeds["es-nulls"] = compact({"session": None, "responseId": None, "queryResult": {
        "action": None, "parameters": None, "intent": None, "outputContexts": None, "languageCode": None},
        "originalDetectIntentRequest": {"source": "telephony", "payload": {"email": ["not-an-email", "b@example.org"]}}})
    return seeds


def write(target: str, seeds: dict[str, bytes]) -> None:
    directory = SEEDS / target
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


def main() -> None:
    events = stripe_events()
    write("signature", signature_seeds(events))
    write("envelope", envelope_seeds(events))
    write("decoders", events)
    write("dialogflow", dialogflow_seeds())


if __name__ == "__main__":
    main()
