// Browser tests of the fieldsync admin console: a real `fieldsync server`
// on 127.0.0.1, real `fieldsync device` syncs, and Debian's Chromium driven
// headless by playwright-core. Screenshots of each page go to
// artifacts/console/ at the repository root.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.FIELDSYNC_BIN || join(root, "target", "debug", "fieldsync");
const shots = join(root, "artifacts", "console");
const ADMIN_TOKEN = "browser-test-admin-token";
// The browser's language and time zone: times on the console are shown in
// them (a zone 5 h 30 min off UTC, so a raw UTC time cannot pass).
const LOCALE = "en-GB";
const TIME_ZONE = "Asia/Kolkata";
/** How the browser writes `iso` in its zone and language (medium date,
 *  short time); checked to hold the hour and minute in TIME_ZONE, which
 *  the UTC time does not. */
async function localTime(iso) {
  const text = await page.evaluate(
    (t) => new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" }).format(new Date(t)),
    iso,
  );
  const hm = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: TIME_ZONE }).format(new Date(iso));
  assert.ok(text.includes(hm), `${text} shows ${hm} (${TIME_ZONE})`);
  assert.ok(!text.includes(iso.slice(11, 16)), `${text} is not the UTC time ${iso}`);
  return text;
}

let server; // { child, url }
let work; // temporary directory
let context;
let page;
const tokens = {};

async function startServer() {
  const child = spawn(
    bin,
    ["server", "--listen", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN, "--data-dir", join(work, "server")],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("server did not start in 30 s")), 30_000);
    lines.once("line", (line) => { clearTimeout(timer); ok(line); });
    child.once("exit", (code) => fail(new Error(`server exited with ${code}`)));
  });
  const event = JSON.parse(first);
  assert.equal(event.event, "listening");
  return { child, url: `http://${event.address}` };
}

async function api(method, path, token, body) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(server.url + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    redirect: "manual",
  });
  const text = await resp.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: resp.status, json };
}

async function admin(method, path, body) {
  const r = await api(method, path, ADMIN_TOKEN, body);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

/** Runs `fieldsync device`; returns { code, json }. */
async function device(name, args) {
  const db = join(work, `${name}.db`);
  try {
    const { stdout } = await run(bin, ["device", "--db", db, "--server", server.url, "--token", tokens[name], "--json", ...args]);
    return { code: 0, json: JSON.parse(stdout) };
  } catch (e) {
    let json = null;
    try { json = JSON.parse(e.stdout); } catch { /* no output */ }
    return { code: e.code, json, stderr: e.stderr };
  }
}

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

function go(path) {
  return page.goto(server.url + path);
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), "fieldsync-console-"));
  mkdirSync(shots, { recursive: true });
  server = await startServer();
  tokens.tech = (await admin("POST", "/v1/admin/users", { id: "tech-1", name: "Tess Technician", role: "technician" })).token;
  tokens.dispatcher = (await admin("POST", "/v1/admin/users", { id: "disp-1", name: "Dana Dispatcher", role: "dispatcher" })).token;
  await admin("POST", "/v1/admin/seed", { technicians: ["tech-1"], work_orders: 20, seed: 7 });
  // A fresh profile directory per run (the persistent-context form is how
  // Playwright takes --user-data-dir).
  context = await chromium.launchPersistentContext(join(work, "chromium-profile"), {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 900 },
    locale: LOCALE,
    timezoneId: TIME_ZONE,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("dialog", (d) => d.accept());
});

after(async () => {
  await context?.close();
  server?.child.kill();
  if (work) rmSync(work, { recursive: true, force: true });
});

test("sign-in refuses device tokens and opens an HttpOnly, SameSite=Strict session for the admin token", async () => {
  await go("/console/sync-errors");
  assert.match(page.url(), /\/console\/login$/, "unauthenticated pages send the browser to sign-in");
  await shot("01-sign-in");

  await page.fill("#token", "not-a-token");
  await page.click("button[type=submit]");
  assert.match(await page.textContent(".notice.error"), /not valid/);

  await page.fill("#token", tokens.tech);
  await page.click("button[type=submit]");
  assert.match(await page.textContent(".notice.error"), /only admins/);
  await page.fill("#token", tokens.dispatcher);
  await page.click("button[type=submit]");
  assert.match(await page.textContent(".notice.error"), /only admins/);
  assert.equal((await context.cookies()).length, 0, "no session for device tokens");

  await page.fill("#token", ADMIN_TOKEN);
  await page.click("button[type=submit]");
  assert.match(page.url(), /\/console\/sync-errors$/);
  assert.equal(await page.textContent("h1"), "Sync Errors");
  const [cookie] = await context.cookies();
  assert.equal(cookie.name, "fieldsync_console");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.path, "/console");
});

test("a device appears on the Devices page after its first sync", async () => {
  await go("/console/devices");
  assert.match(await page.textContent("main"), /No device has contacted the server yet/);
  const first = await device("tech", ["sync"]);
  assert.equal(first.code, 0, JSON.stringify(first));
  await go("/console/devices");
  const rows = page.locator("table.devices tbody tr");
  assert.equal(await rows.count(), 1);
  const row = await rows.first().innerText();
  assert.match(row, /Tess Technician/);
  assert.match(row, /tech-1/);
  // The last sync in the browser's zone and language, not a raw UTC string.
  const [listed] = await admin("GET", "/v1/admin/devices");
  const cells = rows.first().locator("td");
  assert.equal(await cells.nth(2).innerText(), await localTime(listed.last_sync_at));
  assert.equal(await cells.nth(2).locator("time").getAttribute("datetime"), listed.last_sync_at);
  assert.doesNotMatch(row, /\d{4}-\d\d-\d\dT\d\d:\d\d/, "no raw ISO time");
  // Pending uploads come from the device's sync telemetry: none left.
  const headers = await page.locator("table.devices thead th").allInnerTexts();
  assert.equal(headers[4], "Pending uploads");
  assert.equal(await cells.nth(4).innerText(), "0");
  assert.doesNotMatch(row, /not reported/);
  await shot("02-devices");
});

test("the conflict-detection switch turns detection on", async () => {
  await go("/console/settings");
  assert.match(await page.textContent("#conflict-state"), /^No/);
  await page.check("input[name=conflict_detection][value=on]");
  await page.click("form.card button[type=submit]");
  assert.match(await page.textContent(".notice.ok"), /Settings saved/);
  assert.match(await page.textContent("#conflict-state"), /^Yes/);
  assert.deepEqual(await admin("GET", "/v1/admin/settings"), { conflict_detection: true });
  await shot("03-settings");

  // A form post with the session cookie but without the session's
  // anti-forgery token (or with a wrong one) changes nothing.
  for (const form of [{ conflict_detection: "off" }, { conflict_detection: "off", csrf: "0".repeat(64) }]) {
    const forged = await page.request.post(server.url + "/console/settings", { form, maxRedirects: 0 });
    assert.equal(forged.status(), 403);
  }
  assert.deepEqual(await admin("GET", "/v1/admin/settings"), { conflict_detection: true });
});

test("a real conflict lands in Sync Errors, reads side by side, filters, and retries", async () => {
  const put = await device("tech", ["put", "bookings", "bk-0000001", "--set", "notes=Technician: replaced the valve"]);
  assert.equal(put.code, 0, JSON.stringify(put));
  const edit = await api("PUT", "/v1/records/bookings/bk-0000001", tokens.dispatcher, { data: { notes: "Dispatcher: customer asked to reschedule" } });
  assert.equal(edit.status, 200);
  const sync = await device("tech", ["sync"]);
  assert.equal(sync.code, 4, `a conflict is reported by the device: ${JSON.stringify(sync)}`);

  await go("/console/sync-errors");
  const entries = page.locator("article.sync-error");
  assert.equal(await entries.count(), 1);
  const entry = entries.first();
  assert.equal(await entry.getAttribute("data-kind"), "conflict");
  const details = await entry.locator("table.details").innerText();
  for (const want of [/Type\s+Conflict/, /Table\s+bookings/, /Record\s+bk-0000001/, /User\s+tech-1/, /Action\s+update/]) {
    assert.match(details, want);
  }
  const [logged] = await admin("GET", "/v1/admin/sync-errors");
  assert.equal(await entry.locator("header time").innerText(), await localTime(logged.at), "the time in the browser's zone");
  assert.match(await entry.locator("header .message").innerText(), /changed on the server/);
  // Device data and server data side by side, as a field table (not JSON).
  const notesRow = entry.locator("table.compare tr", { hasText: "notes" });
  const cells = await notesRow.locator("td").allInnerTexts();
  assert.deepEqual(cells, ["Technician: replaced the valve", "Dispatcher: customer asked to reschedule"]);
  assert.equal(await notesRow.getAttribute("class"), "differs");
  assert.doesNotMatch(await page.textContent("main"), /\{"/, "no raw JSON on the page");
  await shot("04-sync-errors");

  // Filters by user, table and type.
  await go("/console/sync-errors?user=tech-1&table=bookings&kind=conflict");
  assert.equal(await page.locator("article.sync-error").count(), 1);
  assert.equal(await page.locator("select[name=kind]").inputValue(), "conflict");
  await go("/console/sync-errors?kind=rejected");
  assert.equal(await page.locator("article.sync-error").count(), 0);
  assert.match(await page.textContent("main"), /No sync errors match these filters/);
  await go("/console/sync-errors?table=work_orders");
  assert.equal(await page.locator("article.sync-error").count(), 0);

  // Retry re-applies the device's change: the technician's text wins now.
  await go("/console/sync-errors");
  const before = await api("GET", "/v1/records/bookings/bk-0000001", tokens.dispatcher);
  await page.click("article.sync-error form.retry button");
  assert.match(await page.textContent(".notice.ok"), /retried/);
  assert.match(await page.textContent("article.sync-error .retried"), /Retried .* by admin token/);
  const [retried] = await admin("GET", "/v1/admin/sync-errors");
  assert.equal(retried.retried, true);
  assert.equal(retried.retry.outcome, "applied");
  assert.equal(await page.locator("article.sync-error .retried time").innerText(), await localTime(retried.retry.at));
  assert.equal(await page.locator("article.sync-error form.retry").count(), 0, "no second retry");
  const afterRetry = await api("GET", "/v1/records/bookings/bk-0000001", tokens.dispatcher);
  assert.equal(afterRetry.json.row.notes, "Technician: replaced the valve");
  assert.equal(afterRetry.json.version, before.json.version + 1);
  await shot("05-sync-errors-retried");

  // The retried change is in the change log: the device pulls it.
  const again = await device("tech", ["sync"]);
  assert.equal(again.code, 0, JSON.stringify(again));
  const local = await device("tech", ["get", "bookings", "bk-0000001"]);
  assert.equal(local.json.fields.notes, "Technician: replaced the valve");
  assert.equal(local.json.version, afterRetry.json.version);
});

test("profiles: an invalid rule is shown inline and not published; a valid edit publishes", async () => {
  await go("/console/profiles");
  const link = page.locator("table.profiles a", { hasText: "field-service" });
  assert.equal(await link.count(), 1);
  await shot("06-profiles");
  await link.click();
  assert.match(await page.textContent("h1"), /Offline profile field-service/);
  // The shipped profile, in words: bookings by a custom filter, work orders through bookings.
  const bookingsRules = await page.locator("table.overview tr", { hasText: "bookings" }).first().locator("ul.rules").innerText();
  assert.equal(
    bookingsRules.trim(),
    "Rows where status = \u201Cactive\u201D and resource_id is the user and (start_time is today or in the next 7 days or end_time is today or in the next 7 days)",
  );
  const workOrderRules = await page.locator("table.overview tr", { has: page.locator("th", { hasText: /^work_orders$/ }) }).locator("ul.rules").innerText();
  assert.equal(workOrderRules.trim(), "Rows whose id is the work_order_id of a synced bookings row");
  assert.doesNotMatch(await page.textContent("table.overview"), /filters: |op: /, "no flattened JSON");
  await shot("07-profile");
  const { version } = await admin("GET", "/v1/admin/profiles/field-service");

  await page.fill("#rules-bookings", '{"kind":"owned","column":"no_such_column"}');
  await page.click("form.editor button[type=submit]");
  const invalid = page.locator("fieldset.table.invalid");
  assert.equal(await invalid.count(), 1);
  assert.equal(await invalid.getAttribute("data-table"), "bookings");
  assert.match(await invalid.locator(".field-error").innerText(), /no_such_column/);
  assert.match(await page.textContent(".notice.error"), /Not published/);
  assert.equal(await page.inputValue("#rules-bookings"), '{"kind":"owned","column":"no_such_column"}', "the submitted text is kept");
  assert.equal((await admin("GET", "/v1/admin/profiles/field-service")).version, version, "nothing published");
  await shot("08-profile-invalid-rule");

  await page.fill("#rules-bookings", '{"kind":"owned","column":"resource_id"}');
  await page.fill("#interval-accounts", "120");
  await page.click("form.editor button[type=submit]");
  assert.match(await page.textContent(".notice.ok"), new RegExp(`Published version ${version + 1}`));
  const published = await admin("GET", "/v1/admin/profiles/field-service");
  assert.equal(published.version, version + 1);
  const accounts = published.profile.tables.find((t) => t.name === "accounts");
  assert.equal(accounts.sync_interval_secs, 7200);
  assert.match(await page.locator("table.overview tr", { hasText: "accounts" }).innerText(), /2 h/);
});

test("a rule built with the structured form produces its JSON, publishes, and syncs the rows it says", async () => {
  const only = {
    name: "builder", description: "work orders by priority",
    tables: [{ name: "work_orders", columns: ["name", "priority"], rules: [{ kind: "all" }], sync_interval_secs: 300 }],
  };
  await admin("PUT", "/v1/admin/profiles/builder", only);
  tokens.builder = (await admin("POST", "/v1/admin/users", { id: "tech-b", name: "Bo Builder", role: "technician", profile: "builder" })).token;
  await go("/console/profiles/builder");
  const table = page.locator("fieldset.table[data-table=work_orders]");
  const builder = table.locator(".rule-builder");
  assert.equal(await builder.isVisible(), true);
  await page.fill("#rules-work_orders", "");

  // A value the column's kind cannot read is refused on the spot.
  await builder.locator("select.rb-kind").selectOption("custom");
  await builder.locator("select.rb-column").selectOption("priority");
  await builder.locator("select.rb-op").selectOption("ge");
  await builder.locator("input.rb-value").fill("high");
  await builder.locator("button.rb-add").click();
  assert.match(await builder.locator(".rb-error").innerText(), /not a whole number/);
  assert.equal(await page.inputValue("#rules-work_orders"), "");

  await builder.locator("input.rb-value").fill("3");
  await builder.locator("button.rb-add").click();
  const rule = { kind: "custom", filter: { op: "ge", column: "priority", value: 3 } };
  assert.equal(await page.inputValue("#rules-work_orders"), JSON.stringify(rule), "the same JSON a person would type");
  await shot("09-rule-builder");
  await page.click("form.editor button[type=submit]");
  assert.match(await page.textContent(".notice.ok"), /Published version 2/);
  const published = await admin("GET", "/v1/admin/profiles/builder");
  assert.deepEqual(published.profile.tables[0].rules, [rule]);
  assert.equal(
    (await page.locator("table.overview ul.rules").innerText()).trim(),
    "Rows where priority \u2265 3",
  );

  // The device on that profile keeps exactly the work orders it says.
  const all = (await api("GET", "/v1/records/work_orders?limit=1000", tokens.dispatcher)).json.rows;
  const wanted = all.filter((r) => r.row.priority !== null && r.row.priority >= 3).map((r) => r.id).sort();
  assert.ok(wanted.length > 0 && wanted.length < all.length, `a real cut: ${wanted.length} of ${all.length}`);
  const synced = await device("builder", ["sync"]);
  assert.equal(synced.code, 0, JSON.stringify(synced));
  const local = await device("builder", ["list", "work_orders", "--limit", "1000"]);
  assert.deepEqual(local.json.map((r) => r.id).sort(), wanted);
});

test("telemetry page charts the sync events the devices uploaded", async () => {
  await go("/console/telemetry");
  assert.equal(await page.textContent("h1"), "Telemetry");
  // The devices of the tests above synced with telemetry on (the default):
  // their sync events were uploaded, so the page draws them.
  assert.equal(await page.locator("#telemetry-empty").count(), 0, "telemetry from the devices' syncs arrived");
  assert.ok((await page.locator("svg.sync-counts g.bar").count()) > 0, "sync counts are drawn");
  const failureCards = await page.locator("section.card", { hasText: "Failure rate by failure type" }).innerText();
  const failureCharts = await page.locator("section.card", { hasText: "Failure rate by failure type" }).locator("svg.chart").count();
  assert.ok(failureCharts === 1 || /No sync failed in this window/.test(failureCards), failureCards);
  assert.equal(await page.locator("svg.chart").count(), 2 + failureCharts, "sync counts, durations, and failures when there are any");
  // The technician's sync that ended in a conflict is not a plain success.
  const stat = async (id) => Number(await page.locator(`#${id} .n`).innerText());
  const [total, succeeded, conflicted, failed] = [await stat("stat-syncs"), await stat("stat-succeeded"), await stat("stat-conflicts"), await stat("stat-failed")];
  assert.ok(conflicted >= 1, `the conflicting sync is counted as one: ${conflicted}`);
  assert.equal(succeeded + conflicted + failed, total);
  assert.match(await page.locator("svg.sync-counts").innerHTML(), /rect class="conflicts"/);
  await shot("10-telemetry");
});

test("signing out ends the session", async () => {
  await go("/console/devices");
  await page.click("form.signout button");
  assert.match(await page.textContent("h1"), /Signed out/);
  await go("/console/devices");
  assert.match(page.url(), /\/console\/login$/);
});
