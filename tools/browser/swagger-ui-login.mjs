// Drives Swagger UI in Debian's chromium: Authorize with the OAuth2 password flow, then
// "Try it out" on GET /patients. Prints one JSON line: {authorized, status}.
// Usage: node swagger-ui-login.mjs BASE_URL EMAIL PASSWORD USER_DATA_DIR
import { chromium } from "playwright-core";

const [base, email, password, userDataDir] = process.argv.slice(2);
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  await page.goto(`${base}/ui/`);
  await page.locator(".btn.authorize").first().click();
  const dialog = page.locator(".modal-ux");
  await dialog.locator("#oauth_username").fill(email);
  await dialog.locator("#oauth_password").fill(password);
  const token = page.waitForResponse((r) => r.url().endsWith("/auth/token"));
  await dialog.locator(".btn.modal-btn.auth.authorize").click();
  const tokenStatus = (await token).status();
  // Once authorized, the dialog offers "Logout" instead of "Authorize". isVisible() does not wait
  // (its timeout is ignored), and on a busy machine the dialog re-renders after the token arrives.
  const authorized = await dialog.locator("button.btn.modal-btn.auth", { hasText: "Logout" }).first()
    .waitFor({ state: "visible", timeout: 10000 }).then(() => true, () => false);
  await dialog.locator(".btn-done, .close-modal").first().click();

  const operation = page.locator("#operations-patients-listPatients");
  await operation.locator(".opblock-summary").click();
  await operation.locator(".try-out__btn").click();
  const answer = page.waitForResponse((r) => new URL(r.url()).pathname === "/patients");
  await operation.locator(".btn.execute").click();
  const response = await answer;
  const shown = await operation.locator(".live-responses-table tbody .response-col_status").first().innerText();
  console.log(JSON.stringify({ tokenStatus, authorized, status: response.status(),
                               authorization: (await response.request().headerValue("authorization") || "").split(" ")[0],
                               shown: shown.trim() }));
} finally {
  await context.close();
}
