// Drives the admin page in headless Debian chromium. The Rust test
// tests/web_browser.rs starts the server and passes KHOI_URL, KHOI_PASSWORD,
// KHOI_IMAGE (a raw disk on the server), KHOI_UNKNOWN_MAC and KHOI_ARTIFACTS.
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
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
    // playwright gives every launch a fresh profile directory of its own.
  ],
});
let step = 0;
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.on("dialog", (d) => d.accept());
const shot = async (name) => {
  step += 1;
  await page.screenshot({ path: join(artifacts, `${String(step).padStart(2, "0")}-${name}.png`), fullPage: true });
};
const flash = async () => (await page.locator(".flash").first().textContent()).trim();

try {
  // Log in (Vietnamese by default).
  await page.goto(`${url}/login`);
  assert.match(await page.textContent("button.primary"), /Đăng nhập/);
  await shot("login");
  await page.fill("input[name=name]", "admin");
  await page.fill("input[name=password]", process.env.KHOI_PASSWORD);
  await Promise.all([page.waitForURL(`${url}/`), page.click("button.primary")]);
  await shot("dashboard");

  // Import an image from a path on the server.
  await page.goto(`${url}/images`);
  await page.fill("#import-path input[name=name]", "win10");
  await page.fill("#import-path input[name=path]", process.env.KHOI_IMAGE);
  await page.fill("#import-path input[name=note]", "Windows 10 gốc");
  await Promise.all([page.waitForURL(`${url}/images/win10`), page.click("#import-path button")]);
  assert.match(await flash(), /win10 v1/);
  await shot("imported");

  // Upload another image from the browser, with progress.
  await page.goto(`${url}/images`);
  await page.fill("#upload input[name=name]", "lab");
  await page.setInputFiles("#upload input[name=file]", {
    name: "lab.img", mimeType: "application/octet-stream", buffer: Buffer.alloc(4 << 20, 0),
  });
  await Promise.all([page.waitForURL(`${url}/images/lab`), page.click("#upload button")]);
  await shot("uploaded");

  // Enrol the unknown MAC in one click.
  await page.goto(`${url}/seats`);
  const row = page.locator(`tr[data-mac="${process.env.KHOI_UNKNOWN_MAC}"]`);
  await row.locator("select[name=image]").selectOption("win10");
  // Worded in Vietnamese from the event's values, not its English sentence.
  assert.match(await row.textContent(), /Máy chưa đăng ký xin khởi động \(BIOS\)/);
  await shot("unknown-mac");
  await Promise.all([page.waitForURL(/\/seats\/seat-/), row.locator("button.enrol").click()]);
  const seatUrl = page.url();
  assert.match(await page.textContent("#iscsi"), /iqn\.2025-07\.vn\.khoi:seat-/);
  await shot("enrolled");

  // Open a draft and publish it.
  await page.goto(`${url}/images/win10`);
  await Promise.all([page.waitForLoadState(), page.click("#open-draft")]);
  await page.waitForSelector("#publish");
  await shot("draft-open");
  await page.fill("#publish input[name=note]", "Cài phần mềm một cửa");
  await Promise.all([page.waitForNavigation(), page.click("#publish button.primary")]);
  assert.match(await flash(), /v2/);
  assert.equal(await page.locator('tr[data-version="2"].current').count(), 1);
  await shot("published");

  // Roll back to version 1.
  await Promise.all([page.waitForNavigation(), page.click('tr[data-version="1"] button.rollback')]);
  assert.equal(await page.locator('tr[data-version="1"].current').count(), 1);
  await shot("rolled-back");

  // Reset the seat.
  await page.goto(seatUrl);
  await Promise.all([page.waitForNavigation(), page.click("#reset-seat")]);
  assert.match(await flash(), /seat-/);
  await shot("seat-reset");

  // Switch to English and back.
  await Promise.all([page.waitForNavigation(), page.click("a[data-lang=en]")]);
  assert.equal(page.url(), seatUrl, "the language switch keeps the page");
  assert.match(await page.textContent("header nav"), /Seats/);
  assert.match(await page.textContent("#reset-seat"), /Reset now/);
  await shot("english");
  await page.goto(`${url}/audit`);
  assert.match(await page.textContent("table.events"), /draft\.publish/);
  await shot("audit");

  // The compliance report: English page, Vietnamese page, print layout,
  // and the server-made PDF (read back by the Rust side with pdftotext).
  await page.goto(`${url}/report`);
  assert.match(await page.textContent("#report h2"), /Security assurance report/);
  assert.match(await page.textContent("#report-seats"), /seat-/);
  assert.match(await page.textContent("#report-versions"), /win10/);
  assert.match(await page.textContent("#report-actions"), /draft\.publish/);
  await shot("report-en");
  await Promise.all([page.waitForNavigation(), page.click("a[data-lang=vi]")]);
  assert.match(await page.textContent("#report h2"), /Báo cáo bảo đảm an ninh hệ thống máy trạm giải quyết TTHC/);
  assert.match(await page.textContent("#report"), /Thủ trưởng đơn vị/);
  await shot("report-vi");
  await page.emulateMedia({ media: "print" });
  assert.equal(await page.locator("header").isVisible(), false, "no page chrome in print");
  await shot("report-print");
  await page.emulateMedia({ media: "screen" });
  const href = await page.getAttribute("#report-pdf", "href");
  const res = await page.request.get(`${url}${href}`);
  assert.equal(res.status(), 200);
  assert.equal(res.headers()["content-type"], "application/pdf");
  const pdf = await res.body();
  assert.equal(pdf.subarray(0, 5).toString(), "%PDF-");
  writeFileSync(join(artifacts, "report.pdf"), pdf);

  console.log("browser: 1 passed, 0 failed");
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
