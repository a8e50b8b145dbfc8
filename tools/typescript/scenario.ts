// A clinic's day through the TypeScript client a front-end team would generate: openapi-typescript
// types from the served spec, openapi-fetch calls. Checked with tsc --strict, then run against a
// live server. Usage: node scenario.js BASE_URL EMAIL PASSWORD
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Patient = components["schemas"]["Patient"];
type ErrorCode = components["schemas"]["ErrorCode"];

const [baseUrl, email, password] = process.argv.slice(2);
if (!baseUrl || !email || !password) throw new Error("usage: scenario BASE_URL EMAIL PASSWORD");

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`failed: ${what}`);
}

// The spec's lists take embed as one comma-separated value (style form, explode false).
const api = createClient<paths>({ baseUrl, querySerializer: { array: { style: "form", explode: false } } });
let accessToken = "";
const bearer: Middleware = {
  onRequest({ request }) {
    if (accessToken) request.headers.set("Authorization", `Bearer ${accessToken}`);
    return request;
  },
};
api.use(bearer);

const login = await api.POST("/auth/login", { body: { email, password } });
check(login.data !== undefined, "login answers");
// 202 instead when a step is due: a second factor (POST /auth/mfa/verify), or a choice of
// organization for an address that logs in to several.
const session = login.data.data;
check("access_token" in session, "this admin has one organization and no second factor: login answers tokens");
accessToken = session.access_token;
const me = await api.GET("/auth/me");
check(me.data?.data.email === email, "the token is the admin's");

const branch = await api.POST("/branches", { body: { name: "TypeScript Wing" } });
check(branch.response.status === 201 && branch.data !== undefined, "a branch is created");
const branchId = branch.data.data.id;
check(branch.response.headers.get("Location") === `/branches/${branchId}`, "201 says where the branch lives");

const created: Patient[] = [];
for (const name of ["Ada", "Grace", "Linus"]) {
  const made = await api.POST("/patients", { body: { branch_id: branchId, name } });
  check(made.data !== undefined, `patient ${name} is created`);
  created.push(made.data.data);
}

const first = await api.GET("/patients", {
  params: { query: { branchId, embed: ["branch"], pageSize: 2 } },
});
check(first.data !== undefined, "the list answers");
const page = first.data.data;
check(page.total === 3 && page.patients.length === 2, "two of three patients on the first page");
check(page.patients.every((p) => p.branch?.name === "TypeScript Wing"), "each patient embeds its branch");
check((first.response.headers.get("Link") ?? "").includes('rel="next"'), "the first page links to the next");
const second = await api.GET("/patients", { params: { query: { branchId, page: 2, pageSize: 2 } } });
check(second.data?.data.patients.length === 1, "the last patient on the second page");
const listed = new Set([...page.patients, ...second.data.data.patients].map((p) => p.id));
check(created.every((p) => listed.has(p.id)), "paging visits every patient once");

const refused = await api.POST("/patients", {
  body: { branch_id: "00000000-0000-4000-8000-000000000000", name: "Nobody" },
});
const code: ErrorCode | undefined = refused.error?.error.code;
check(refused.response.status === 422 && code === "INVALID_REFERENCE", "an unknown branch is 422 INVALID_REFERENCE");

const renewed = await api.POST("/auth/refresh", { body: { refresh_token: session.refresh_token } });
check(renewed.data !== undefined && renewed.data.data.refresh_token !== session.refresh_token,
      "refresh rotates the refresh token");
accessToken = renewed.data.data.access_token;
check((await api.GET("/auth/me")).response.status === 200, "the renewed access token works");

console.log(JSON.stringify({ patients: created.length, pages: 2, errorCode: code, refreshed: true }));
