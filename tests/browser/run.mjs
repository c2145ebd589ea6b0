// The shopper's page in a real headless Chromium: upload a photo, see result cards, load more,
// apply a facet, open details, "More like this", draw a crop, try an unsupported file, and look
// at it on a phone-sized screen. Screenshots go to $LOOKALIKE_ARTIFACTS. Exits non-zero on the
// first failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = process.env.LOOKALIKE_URL;
const photo = process.env.LOOKALIKE_PHOTO;
const textFile = process.env.LOOKALIKE_TEXT_FILE;
const artifacts = process.env.LOOKALIKE_ARTIFACTS || "artifacts";
if (!url || !photo || !textFile) {
  console.error("set LOOKALIKE_URL, LOOKALIKE_PHOTO and LOOKALIKE_TEXT_FILE (tests/http.rs does)");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

const profile = mkdtempSync(join(tmpdir(), "lookalike-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  viewport: { width: 1280, height: 900 },
});
context.setDefaultTimeout(20000);
const page = context.pages()[0] || (await context.newPage());
const problems = [];
page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
page.on("console", (msg) => {
  // Chromium logs every non-2xx fetch; the unsupported-file step causes one on purpose.
  if (msg.type() === "error" && !msg.text().includes("status of 415")) problems.push(`console error: ${msg.text()}`);
});

const cards = () => page.locator("#grid li.card");
const searchDone = () => page.waitForResponse((r) => r.url().endsWith("/api/search") && r.request().method() === "POST");

try {
  await page.goto(url);
  await page.waitForSelector("#facet-form fieldset");
  check(await page.locator("label[for=file]").isVisible(), "the photo picker has a visible label");
  check((await page.getAttribute("#file", "accept")) === "image/*", "the picker accepts images (camera on phones)");
  await page.keyboard.press("Tab");
  check((await page.evaluate(() => document.activeElement.id)) === "file", "Tab reaches the photo picker first");
  const outline = await page.$eval("label[for=file]", (l) => getComputedStyle(l).outlineStyle);
  check(outline !== "none", "the focused picker shows a focus ring on its label");

  // Upload.
  let done = searchDone();
  await page.setInputFiles("#file", photo);
  await done;
  await page.waitForFunction(() => document.querySelectorAll("#grid li.card").length === 24);
  check((await cards().count()) === 24, "uploading a photo shows a page of 24 result cards");
  check(/Query time \d+ ms/.test(await page.textContent("#status")), "the query time is shown");
  const scores = await page.locator("#grid .score").allTextContents();
  const values = scores.map((s) => parseFloat(s.replace(/[^0-9.\-]/g, "")));
  check(values.every((v, i) => i === 0 || values[i - 1] >= v), "cards are best first");
  await page.waitForFunction(() => [...document.querySelectorAll("#grid img")].slice(0, 6).every((img) => img.complete && img.naturalWidth > 0));
  await page.screenshot({ path: join(artifacts, "results.png"), fullPage: false });

  // Load more.
  done = searchDone();
  await page.click("#load-more");
  await done;
  await page.waitForFunction(() => document.querySelectorAll("#grid li.card").length === 48);
  check(true, "Load more appends the next page");

  // A facet: every card then has that category.
  const facetBox = page.locator("#facet-form input[name=articleType]").first();
  const facetValue = await facetBox.getAttribute("value");
  done = searchDone();
  await facetBox.check();
  await done;
  await page.waitForFunction((v) => {
    const items = [...document.querySelectorAll("#grid li.card")];
    return items.length > 0 && items.every((li) => li.dataset.category === v);
  }, facetValue);
  check((await cards().count()) === 24, `the ${facetValue} facet gives a full page, all ${facetValue}`);
  await facetBox.uncheck();
  await page.waitForFunction((v) => [...document.querySelectorAll("#grid li.card")].some((li) => li.dataset.category !== v), facetValue);

  // Details dialog.
  const firstId = await cards().first().getAttribute("data-id");
  await cards().first().locator("button.open").click();
  await page.waitForSelector("#details[open]");
  const meta = await page.textContent("#details-meta");
  check(meta.includes(firstId) && meta.includes("articleType"), "the details dialog lists the product's metadata");
  await page.keyboard.press("Escape");
  await page.waitForSelector("#details:not([open])", { state: "attached" });
  check(true, "Escape closes the details dialog");

  // More like this.
  done = searchDone();
  await cards().first().locator("button.like").click();
  await done;
  await page.waitForFunction((id) => {
    const ids = [...document.querySelectorAll("#grid li.card")].map((li) => li.dataset.id);
    return ids.length === 24 && !ids.includes(id);
  }, firstId);
  check((await page.textContent("#status")).includes("products like"), `"More like this" on ${firstId} shows similar products, without it`);

  // Crop: draw a box on the photo; the search reruns with crop=x,y,w,h.
  done = searchDone();
  await page.setInputFiles("#file", photo);
  await done;
  const box = await page.locator("#preview").boundingBox();
  done = searchDone();
  await page.mouse.move(box.x + box.width * 0.1, box.y + box.height * 0.1);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.4, box.y + box.height * 0.4, { steps: 5 });
  await page.mouse.move(box.x + box.width * 0.7, box.y + box.height * 0.75, { steps: 5 });
  await page.mouse.up();
  // (Chromium does not expose multipart bodies with files to Playwright, so the page records
  // the crop field it sent.)
  const crop = (await page.getAttribute("#crop-area", "data-crop")) || "";
  const [cx, cy, cw, ch] = crop.split(",").map(Number);
  check(Math.abs(cx - 0.1) < 0.03 && Math.abs(cy - 0.1) < 0.03 && Math.abs(cw - 0.6) < 0.03 && Math.abs(ch - 0.65) < 0.03, `the drawn box is sent as crop=${crop}`);
  const cropResponse = await done;
  check(cropResponse.status() === 200, "the cropped search succeeds");
  await page.waitForFunction(() => document.querySelector("#status").textContent.includes("the part of your photo"));
  check(await page.locator("#crop-box").isVisible(), "the crop box stays on the photo");
  check(!(await page.locator("#clear-crop").isDisabled()), "the crop can be cleared");
  await page.screenshot({ path: join(artifacts, "crop.png"), fullPage: false });

  // Unsupported file: the API's message appears on the page.
  done = searchDone();
  await page.setInputFiles("#file", textFile);
  const refused = await done;
  check(refused.status() === 415, "a text file is refused with 415");
  await page.waitForSelector("#error:not([hidden])");
  const error = await page.textContent("#error");
  check(/unsupported format/i.test(error) && error.includes("JPEG"), `the page explains: "${error}"`);

  // Keyboard: every button has a name, and focus is visible.
  const unnamed = await page.$$eval("button", (bs) => bs.filter((b) => !(b.getAttribute("aria-label") || b.textContent.trim())).length);
  check(unnamed === 0, "every button has an accessible name");

  // Phone-sized screen.
  await page.setViewportSize({ width: 390, height: 844 });
  done = searchDone();
  await page.setInputFiles("#file", photo);
  await done;
  await page.waitForFunction(() => document.querySelectorAll("#grid li.card").length === 24);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 0, "no horizontal scrolling on a 390px-wide phone");
  await page.screenshot({ path: join(artifacts, "mobile.png"), fullPage: false });

  check(problems.length === 0, `no script errors${problems.length ? ": " + problems.join("; ") : ""}`);
  console.log("browser test passed");
} catch (err) {
  await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
  console.error(err.message);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
