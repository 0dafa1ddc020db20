// The billing page's script (served by billing's API at /billing/billing.js). No
// framework, no build step: it calls this origin's /v1 API with the user's JWT and
// writes text into the page (textContent only, never HTML).
'use strict';

(() => {
  // The token arrives once in the fragment (`/billing#token=<JWT>`) and is kept for this
  // tab only, so reloads and coming back from Stripe work without it in the address bar.
  const TOKEN_KEY = 'tollgate.billing.token';
  const PAGE_SIZE = 5;
  // Subscription statuses that still bill: a new subscription checkout is refused.
  const LIVE = ['active', 'trialing', 'past_due', 'unpaid', 'paused'];
  const CYCLES = { day: 'Daily', week: 'Weekly', month: 'Monthly', year: 'Yearly' };

  const $ = (id) => document.getElementById(id);
  let token = null;

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const given = fragment.get('token');
    if (given) {
      sessionStorage.setItem(TOKEN_KEY, given);
      // Out of the address bar and the history at once.
      history.replaceState(null, '', location.pathname + location.search);
      return given;
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new ApiError(0, 'network', 'Billing cannot be reached. Check your connection and try again.');
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // Not JSON: the status says enough.
    }
    if (!response.ok) {
      const error = (payload && payload.error) || {};
      throw new ApiError(
        response.status,
        error.code || 'error',
        error.message || `Billing answered ${response.status}.`,
        response.headers.get('Retry-After'),
      );
    }
    return payload;
  }

  function showMessage(text, kind) {
    const message = $('message');
    message.textContent = text;
    message.dataset.kind = kind;
    message.hidden = false;
  }

  function hideMessage() {
    $('message').hidden = true;
  }

  // Says what went wrong in words a customer can act on; returns the message's kind.
  function report(error) {
    if (!(error instanceof ApiError)) {
      showMessage('Something went wrong on this page. Please reload it.', 'error');
      return 'error';
    }
    if (error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showMessage('Your session has expired or is not valid. Please sign in again.', 'unauthenticated');
      return 'unauthenticated';
    }
    if (error.status === 429) {
      const seconds = Number.parseInt(error.retryAfter, 10);
      const wait = seconds > 0 ? `${seconds} second${seconds === 1 ? '' : 's'}` : 'a moment';
      showMessage(`Too many requests. Please try again in ${wait}.`, 'rate_limited');
      return 'rate_limited';
    }
    if (error.code === 'no_such_customer') {
      showMessage('You have no billing account yet. Choose a plan or buy credits to start one.', 'no_account');
      return 'no_account';
    }
    if (error.status === 0 || error.status >= 500) {
      showMessage(`Billing is unavailable right now: ${error.message}`, 'unavailable');
      return 'unavailable';
    }
    showMessage(error.message, 'refused');
    return 'refused';
  }

  function words(value) {
    if (!value) return '—';
    const text = String(value).replace(/_/g, ' ');
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function day(iso) {
    return iso ? String(iso).slice(0, 10) : '—';
  }

  function count(n) {
    return Number(n).toLocaleString('en-US');
  }

  // Amounts come in minor units; the currency says how many decimals it has.
  function money(amount, currency) {
    if (amount === null || amount === undefined || !currency) return '—';
    try {
      const format = new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() });
      return format.format(amount / 10 ** format.resolvedOptions().maximumFractionDigits);
    } catch {
      return `${amount} ${currency}`;
    }
  }

  function safeUrl(url) {
    try {
      return new URL(url).protocol === 'https:' ? url : null;
    } catch {
      return null;
    }
  }

  function cell(row, text) {
    const td = document.createElement('td');
    td.textContent = text;
    row.append(td);
    return td;
  }

  function link(url, text) {
    const a = document.createElement('a');
    a.href = url;
    a.textContent = text;
    a.rel = 'noopener noreferrer';
    a.target = '_blank';
    return a;
  }

  function set(id, text) {
    $(id).textContent = text;
  }

  function renderStatus(status, catalog) {
    set('tier', status.test_user ? `${status.tier_name} (test user)` : status.tier_name);
    $('tier').dataset.tier = status.tier;
    set('status', words(status.status));
    $('status').dataset.status = status.status;
    set('access', status.hasAccess ? 'Yes' : 'No');
    set('last-payment', day(status.last_payment_date));
    set('credits-balance', count(status.credits.balance));
    set('credits-used', count(status.credits.used));
    set('credits-limit', count(status.credits.limit));

    const sub = status.subscription;
    $('subscription').hidden = !sub;
    $('no-subscription').hidden = !!sub;
    if (sub) {
      set('sub-plan', sub.plan_name || sub.plan || '—');
      set('sub-status', words(sub.status) + (sub.cancel_at_period_end ? ` (ends ${day(sub.current_period_end)})` : ''));
      set('sub-cycle', CYCLES[sub.billing_cycle] || words(sub.billing_cycle));
      set('sub-payment', words(sub.payment_status));
      set('sub-next', day(sub.next_billing_date));
    }

    const live = !!sub && LIVE.includes(sub.status);
    $('checkout-off').hidden = catalog.checkout;
    $('upgrade-box').hidden = !catalog.checkout || live || catalog.plans.length === 0;
    $('change-plan').hidden = !catalog.checkout || !live;
    $('topup-box').hidden = !catalog.checkout || catalog.credit_packs.length === 0;
    $('manage-box').hidden = !catalog.checkout;

    const plan = $('plan');
    plan.replaceChildren(...catalog.plans.map((p) => new Option(p.name, p.key)));
    const pack = $('pack');
    pack.replaceChildren(...catalog.credit_packs.map((p) => new Option(
      p.amount === null ? `${count(p.credits)} credits` : `${count(p.credits)} credits, ${money(p.amount, p.currency)}`,
      String(p.credits),
    )));
  }

  function transactionRow(t) {
    const row = document.createElement('tr');
    row.dataset.id = t.id;
    cell(row, day(t.occurred_at));
    cell(row, t.description || words(t.kind));
    cell(row, words(t.status));
    cell(row, money(t.amount, t.currency));
    return row;
  }

  function invoiceRow(i) {
    const row = document.createElement('tr');
    row.dataset.id = i.id;
    cell(row, day(i.created));
    cell(row, i.number || i.id);
    cell(row, words(i.status));
    cell(row, money(i.amount_due, i.currency));
    const links = cell(row, '');
    const hosted = safeUrl(i.hosted_invoice_url);
    const pdf = safeUrl(i.invoice_pdf);
    if (hosted) links.append(link(hosted, 'View'));
    if (hosted && pdf) links.append(' ');
    if (pdf) links.append(link(pdf, 'PDF'));
    return row;
  }

  function methodItem(m) {
    const item = document.createElement('li');
    item.dataset.id = m.id;
    const name = m.brand ? words(m.brand) : words(m.type);
    const last4 = m.last4 ? ` ending in ${m.last4}` : '';
    const expiry = m.exp_month && m.exp_year ? `, expires ${String(m.exp_month).padStart(2, '0')}/${m.exp_year}` : '';
    item.textContent = `${name}${last4}${expiry}${m.default ? ' (default)' : ''}`;
    return item;
  }

  // A list shown a page at a time, newest first, with a "More" button while there is more.
  function pager(id, path, render) {
    let cursor = null;
    const more = $(`${id}-more`);
    async function load(first) {
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (!first && cursor) query.set('cursor', cursor);
      const page = await api('GET', `${path}?${query}`);
      if (first) $(id).replaceChildren();
      $(id).append(...page.data.map(render));
      cursor = page.next_cursor;
      more.hidden = !page.has_more;
      $(`${id}-empty`).hidden = $(id).children.length > 0;
    }
    more.addEventListener('click', () => act(more, () => load(false)));
    return load;
  }

  const lists = [
    pager('transactions', '/v1/billing/transactions', transactionRow),
    pager('invoices', '/v1/billing/invoices', invoiceRow),
    pager('payment-methods', '/v1/billing/payment-methods', methodItem),
  ];

  async function act(button, action) {
    button.disabled = true;
    hideMessage();
    try {
      await action();
    } catch (error) {
      report(error);
    } finally {
      button.disabled = false;
    }
  }

  // Checkout and portal sessions answer a Stripe URL: the whole tab goes there.
  function go(session) {
    const url = safeUrl(session && session.url);
    if (!url) throw new ApiError(502, 'bad_link', 'Billing answered without a usable link.');
    location.assign(url);
  }

  $('upgrade').addEventListener('click', () => act($('upgrade'), async () => {
    go(await api('POST', '/v1/checkout/sessions', { kind: 'subscription', plan: $('plan').value }));
  }));
  $('topup').addEventListener('click', () => act($('topup'), async () => {
    go(await api('POST', '/v1/checkout/sessions', { kind: 'topup', pack: Number($('pack').value) }));
  }));
  $('manage').addEventListener('click', () => act($('manage'), async () => {
    go(await api('POST', '/v1/portal/sessions'));
  }));

  async function catalog() {
    const response = await fetch('/billing/catalog.json', { cache: 'no-store', credentials: 'omit' });
    if (!response.ok) throw new ApiError(response.status, 'catalog', 'The plans could not be loaded.');
    return response.json();
  }

  function finish(state) {
    $('loading').hidden = true;
    document.body.dataset.state = state;
  }

  async function start() {
    token = takeToken();
    if (!token) {
      showMessage('Sign in to see your billing.', 'signed_out');
      finish('signed-out');
      return;
    }
    try {
      const [plans, status] = await Promise.all([catalog(), api('GET', '/v1/billing/status')]);
      renderStatus(status, plans);
      $('account').hidden = false;
      await Promise.all(lists.map((load) => load(true)));
      $('history').hidden = false;
      finish('ready');
    } catch (error) {
      const kind = report(error);
      if (kind === 'unauthenticated') $('account').hidden = true;
      finish('error');
    }
  }

  start();
})();
