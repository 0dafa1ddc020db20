// Drives billing's page (GET /billing) in Debian's headless Chromium with playwright-core
// and prints what a person would have seen, as one JSON object on stdout. The Rust test
// (crates/billing/tests/api/page.rs) starts the real billing API, seeds the state, runs
// this script and asserts on its output; this script only acts and observes, and exits
// non-zero when the page does not get where it should.
//
//   node tests/browser/billing-page.mjs '<config JSON>'
//
// config: { base, tokens: { paying, former, expired, busy }, stripeHosts: [...] }.
// playwright-core comes from $TOLLGATE_BROWSER_MODULES (scripts/browser-tools.sh installs
// it there), else from a node_modules beside this file.
import { createRequire } from 'node:module';

const modules = process.env.TOLLGATE_BROWSER_MODULES;
const require = createRequire(modules ? `${modules}/package.json` : import.meta.url);
const { chromium } = require('playwright-core');

const config = JSON.parse(process.argv[2]);
const { base, tokens } = config;
const ACTION_TIMEOUT_MS = 10_000;

// A stuck browser must not hold `make test`: the whole run gets 90 s at most (it takes ~20 s).
setTimeout(() => {
  console.error('billing-page.mjs: gave up after 90 s');
  process.exit(3);
}, 90_000).unref();

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  // As root in a container: no sandbox. Chromium must not reach for Google's services
  // on a closed network.
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

// A browser context per user (its own sessionStorage). Anything not on billing's origin
// (Stripe's checkout and portal) is answered here with a small page and recorded, so the
// test sees where the page sent the user without any network.
async function user() {
  const context = await browser.newContext();
  const left = [];
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(`${base}/`)) return route.continue();
    left.push(url);
    return route.fulfill({ status: 200, contentType: 'text/html', body: '<title>Stripe</title>' });
  });
  const page = await context.newPage();
  page.setDefaultTimeout(ACTION_TIMEOUT_MS);
  const consoleErrors = [];
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => consoleErrors.push(`pageerror: ${error.message}`));
  return { context, page, left, consoleErrors };
}

// Opens the page and waits until it has loaded or given up (never "loading").
async function open(page, fragment) {
  await page.goto(`${base}/billing${fragment}`);
  await page.waitForSelector('body:not([data-state="loading"])');
  return page.evaluate(() => document.body.dataset.state);
}

const text = (page, selector) => page.locator(selector).innerText();
const visible = (page, selector) => page.locator(selector).isVisible();

async function account(page) {
  return {
    tier: await text(page, '#tier'),
    tierKey: await page.locator('#tier').getAttribute('data-tier'),
    status: await text(page, '#status'),
    statusKey: await page.locator('#status').getAttribute('data-status'),
    access: await text(page, '#access'),
    lastPayment: await text(page, '#last-payment'),
    credits: {
      balance: await text(page, '#credits-balance'),
      used: await text(page, '#credits-used'),
      limit: await text(page, '#credits-limit'),
    },
    subscriptionShown: await visible(page, '#subscription'),
    subscription: {
      plan: await text(page, '#sub-plan'),
      status: await text(page, '#sub-status'),
      cycle: await text(page, '#sub-cycle'),
      payment: await text(page, '#sub-payment'),
      next: await text(page, '#sub-next'),
    },
    upgradeShown: await visible(page, '#upgrade'),
    changePlanShown: await visible(page, '#change-plan'),
    topupShown: await visible(page, '#topup'),
    manageShown: await visible(page, '#manage'),
    plans: await page.locator('#plan option').evaluateAll((options) => options.map((o) => ({ key: o.value, name: o.textContent }))),
  };
}

async function rows(page, selector) {
  return page.locator(`${selector} > *`).evaluateAll((items) => items.map((item) => ({
    id: item.dataset.id,
    cells: item.tagName === 'TR' ? [...item.cells].map((c) => c.innerText.trim()) : [item.innerText.trim()],
    links: [...item.querySelectorAll('a')].map((a) => ({ text: a.textContent, href: a.href })),
  })));
}

// Clicks "More" until the list has everything; returns the pages' lengths and the rows.
async function everything(page, list) {
  const pages = [await page.locator(`#${list} > *`).count()];
  while (await visible(page, `#${list}-more`)) {
    const before = pages.reduce((a, b) => a + b, 0);
    await page.click(`#${list}-more`);
    await page.waitForFunction(
      ([id, n]) => document.getElementById(id).children.length > n,
      [list, before],
    );
    pages.push((await page.locator(`#${list} > *`).count()) - before);
  }
  return { pages, rows: await rows(page, `#${list}`) };
}

// Clicks `button` and waits until the tab has left for a Stripe URL.
async function leaveVia(page, button) {
  await Promise.all([
    page.waitForURL((url) => !url.href.startsWith(`${base}/`)),
    page.click(button),
  ]);
  return page.url();
}

const report = {};

// A paying customer: everything shown, every list paged through, then Manage billing;
// back on the page without the fragment (the tab kept the token), then Buy credits.
{
  const { context, page, left, consoleErrors } = await user();
  const state = await open(page, `#token=${tokens.paying}`);
  const shown = { state, addressBar: page.url(), ...(await account(page)) };
  shown.transactions = await everything(page, 'transactions');
  shown.invoices = await everything(page, 'invoices');
  shown.paymentMethods = await everything(page, 'payment-methods');
  shown.manage = await leaveVia(page, '#manage');
  shown.reloadState = await open(page, '');
  await page.selectOption('#pack', '500');
  shown.topup = await leaveVia(page, '#topup');
  shown.consoleErrors = consoleErrors;
  shown.left = left;
  report.paying = shown;
  await context.close();
}

// A former subscriber: no live subscription, so Upgrade, with the first plan for sale.
{
  const { context, page, left, consoleErrors } = await user();
  const state = await open(page, `#token=${tokens.former}`);
  const shown = { state, ...(await account(page)) };
  shown.upgrade = await leaveVia(page, '#upgrade');
  shown.consoleErrors = consoleErrors;
  shown.left = left;
  report.former = shown;
  await context.close();
}

// An expired token: the sign-in-again message, nothing else.
{
  const { context, page } = await user();
  const state = await open(page, `#token=${tokens.expired}`);
  report.expired = {
    state,
    message: await text(page, '#message'),
    kind: await page.locator('#message').getAttribute('data-kind'),
    accountShown: await visible(page, '#account'),
    storedToken: await page.evaluate(() => sessionStorage.getItem('tollgate.billing.token')),
  };
  await context.close();
}

// No token at all.
{
  const { context, page } = await user();
  const state = await open(page, '');
  report.signedOut = {
    state,
    message: await text(page, '#message'),
    kind: await page.locator('#message').getAttribute('data-kind'),
  };
  await context.close();
}

// A user reloading over and over: past the API's rate limit the page says so.
{
  const { context, page } = await user();
  let state = await open(page, `#token=${tokens.busy}`);
  let loads = 1;
  while (state === 'ready' && loads < config.maxLoads) {
    state = await open(page, '');
    loads += 1;
  }
  report.busy = {
    state,
    loads,
    message: await text(page, '#message'),
    kind: await page.locator('#message').getAttribute('data-kind'),
  };
  await context.close();
}

await browser.close();
process.stdout.write(`${JSON.stringify(report)}\n`);
