// The host checks page in headless Debian chromium, against a real
// `khoi serve`. tests/web_doctor.rs starts the server and passes KHOI_URL,
// KHOI_PASSWORD (the first admin's) and KHOI_ARTIFACTS.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";

const url = process.env.KHOI_URL;
const artifacts = process.env.KHOI_ARTIFACTS;
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const shot = (name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });

try {
  await page.goto(`${url}/login`);
  await page.fill("input[name=name]", "admin");
  await page.fill("input[name=password]", process.env.KHOI_PASSWORD);
  await Promise.all([page.waitForURL(`${url}/`), page.click("button.primary")]);

  // From the menu to the checks, in Vietnamese.
  await Promise.all([page.waitForURL(`${url}/doctor`), page.click("header nav a[href='/doctor']")]);
  assert.match(await page.textContent("h2"), /Kiểm tra máy chủ/);
  const rows = page.locator("#doctor tbody tr");
  assert.ok((await rows.count()) >= 5, "every check has a line");
  // Each line is OK, WARN or FAIL; every line that is not OK says the fix.
  for (const row of await rows.all()) {
    const badge = (await row.locator(".badge").textContent()).trim();
    assert.match(badge, /^(OK|WARN|FAIL)$/);
    if (badge !== "OK") {
      assert.match(await row.locator(".fix").textContent(), /Cách sửa:/);
    }
  }
  const version = page.locator("#doctor tr[data-id=version]");
  assert.match(await version.textContent(), /máy chủ đang chạy/);
  const pxe = page.locator("#doctor tr[data-id=pxe]");
  assert.equal(await pxe.getAttribute("class"), "check-warn");
  assert.match(await page.textContent("#doctor-summary"), /OK/);
  await shot("doctor-vi");

  // The page's language, not the server's locale, words the checks.
  await Promise.all([page.waitForNavigation(), page.click("a[data-lang=en]")]);
  assert.equal(page.url(), `${url}/doctor`);
  assert.match(await page.textContent("h2"), /Host checks/);
  assert.match(await pxe.textContent(), /No boot network configured/);
  assert.match(await pxe.locator(".fix").textContent(), /Fix:.*add the pxe section/);
  await shot("doctor-en");
  console.log("browser doctor: 1 passed, 0 failed");
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
