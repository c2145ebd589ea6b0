// How long a shopper on a slow link waits for results after choosing a camera photo, with the
// page's shrinking on the device. Not a test: a measurement, printed as a table row.
//
//   node bench/page_upload.mjs URL PHOTO [UPLOAD_KBIT] [ROUNDS]
//
// URL: a running `lookalike serve`; PHOTO: any photo the browser can decode (it is enlarged in
// the page to a 12-megapixel camera shot, 4032x3024, with sensor-like noise, and saved as PNG, so
// the file the shopper picks is about 30 MB); UPLOAD_KBIT: the link's upload speed (default
// 750, a slow mobile link; 1.5 Mbit/s down, 150 ms latency). Uses Debian's chromium and
// tests/browser/node_modules (run `scripts/browser-test.sh` once, or `npm install` there).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../tests/browser/package.json", import.meta.url));
const { chromium } = require("playwright-core");
const [url, photo, kbit = "750", rounds = "3"] = process.argv.slice(2);
if (!url || !photo) {
  console.error("usage: node bench/page_upload.mjs URL PHOTO [UPLOAD_KBIT] [ROUNDS]");
  process.exit(2);
}
const upload = Number(kbit) * 1000 / 8;

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu"] });
const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
await page.goto(url);
await page.waitForSelector("#facet-form fieldset", { state: "attached" });
// The camera photo, made in the page (no image library needed here).
const size = await page.evaluate(async (base64) => {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const source = await createImageBitmap(new Blob([bytes]));
  const canvas = document.createElement("canvas");
  canvas.width = 4032;
  canvas.height = 3024;
  const g = canvas.getContext("2d");
  g.drawImage(source, 0, 0, canvas.width, canvas.height);
  const pixels = g.getImageData(0, 0, canvas.width, canvas.height);
  let state = 12345;
  for (let i = 0; i < pixels.data.length; i++) {
    if (i % 4 === 3) continue;
    state = (state * 1664525 + 1013904223) >>> 0;
    pixels.data[i] = Math.min(255, pixels.data[i] + (state >>> 28));
  }
  g.putImageData(pixels, 0, 0);
  window.cameraPhoto = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return window.cameraPhoto.size;
}, readFileSync(photo).toString("base64"));

const cdp = await page.context().newCDPSession(page);
await cdp.send("Network.enable");
await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 150, downloadThroughput: 1.5e6 / 8, uploadThroughput: upload });
const times = [];
let sent = 0;
for (let round = 0; round < Number(rounds); round++) {
  const started = Date.now();
  await page.evaluate(() => {
    const input = document.getElementById("file");
    const files = new DataTransfer();
    files.items.add(new File([window.cameraPhoto], "camera.png", { type: "image/png" }));
    input.files = files.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  });
  await page.waitForFunction(() => !document.body.classList.contains("searching") && document.querySelectorAll("#grid li.card").length > 0 && document.querySelector("#crop-area").dataset.sentBytes, null, { timeout: 600000 });
  times.push((Date.now() - started) / 1000);
  sent = Number(await page.getAttribute("#crop-area", "data-sent-bytes"));
  await page.evaluate(() => document.querySelector("#crop-area").removeAttribute("data-sent-bytes"));
}
times.sort((a, b) => a - b);
const median = times[Math.floor(times.length / 2)];
console.log(`| ${(size / 1e6).toFixed(1)} MB PNG, 4032x3024 | ${kbit} kbit/s up | sent ${(sent / 1e3).toFixed(0)} KB | photo chosen to results: median ${median.toFixed(2)} s (${times.map((t) => t.toFixed(2)).join(", ")}) | the photo as it is would take ${(size / upload).toFixed(0)} s to upload alone |`);
await browser.close();
