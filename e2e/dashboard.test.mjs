// End-to-end: the live dashboard, in Debian's headless Chromium, follows a
// burst until its counter reaches the code's limit. Run by scripts/e2e.sh,
// which starts the gateway and passes:
//   BASE_URL, ADMIN_TOKEN, CODE, LIMIT, USER_TOKENS (file, one per line), SCREENSHOT
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const { BASE_URL, ADMIN_TOKEN, CODE, LIMIT, USER_TOKENS, SCREENSHOT } = process.env;
const limit = Number(LIMIT);
const tokens = readFileSync(USER_TOKENS, "utf8").split("\n").filter(Boolean);
let passed = 0, failed = 0;

function check(name, ok, detail = "") {
  console.log(`${ok ? "PASS" : "FAIL"} ${name}${ok ? "" : " -- " + detail}`);
  ok ? passed++ : failed++;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // This machine's network is closed: keep Chromium from calling home.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  await page.goto(`${BASE_URL}/dashboard`);
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("#connect");
  const card = page.locator(`.code-card[data-code="${CODE}"]`);
  await card.waitFor({ timeout: 10000 });
  await page.waitForFunction(
    code => document.querySelector(`.code-card[data-code="${code}"] .remaining`)?.textContent !== "–",
    CODE, { timeout: 10000 });
  check("the dashboard shows the active code", true);

  // The burst: every user at once, from outside the page, like the mobile app.
  const statuses = await Promise.all(tokens.map(t =>
    fetch(`${BASE_URL}/codes/use`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${t}` },
      body: JSON.stringify({ code: CODE }),
    }).then(r => r.status)));
  const ok = statuses.filter(s => s === 200).length;
  check(`burst: ${ok} x 200 of ${tokens.length} (limit ${limit})`, ok === limit, JSON.stringify(statuses));

  await page.waitForFunction(
    ([code, want]) => document.querySelector(`.code-card[data-code="${code}"] .redeemed`)?.textContent === String(want),
    [CODE, limit], { timeout: 20000 }).then(() => check("the page's counter reaches the limit", true),
      async e => check("the page's counter reaches the limit", false, await card.locator(".redeemed").textContent()));
  const remaining = await card.locator(".remaining").textContent();
  check("remaining shows 0", remaining === "0", remaining);
  const soldOut = await card.locator(".rejections").textContent();
  check("rejections are shown", /sold out: \d+/.test(soldOut), soldOut);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  check("no script errors in the page", errors.length === 0, errors.join("; "));
} catch (e) {
  check("dashboard end-to-end", false, String(e));
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
