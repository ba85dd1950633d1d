// The sign-in page: trade an API token for the session cookie (POST /v1/session), then go to the
// page the user was going to (?next=).

import { ApiError, signIn } from "../api.js";
import { h } from "../dom.js";

/** `next` when it is a console page of this origin, else the runs list. */
function safeNext(next) {
  if (!next || !next.startsWith("/") || next.startsWith("//") || next.startsWith("/sign-in")) return "/runs";
  return next;
}

export async function render(main, { query, ctx }) {
  const next = safeNext(query.get("next"));
  if (ctx.session) {
    ctx.navigate(next, { replace: true });
    return undefined;
  }
  ctx.setTitle("Sign in");

  const input = h("input", { id: "token", type: "password", autocomplete: "off", spellcheck: "false", required: true, "aria-describedby": "token-hint" });
  const alert = h("div", { class: "alert", role: "alert", id: "signin-error" });
  const button = h("button", { type: "submit", class: "primary", text: "Sign in" });
  const form = h(
    "form",
    { class: "signin-form", novalidate: true },
    h(
      "div",
      { class: "field" },
      h("label", { for: "token", text: "API token" }),
      input,
      h(
        "p",
        { class: "hint", id: "token-hint" },
        "After ",
        h("code", { text: "make run" }),
        " (or ",
        h("code", { text: "flowledger serve" }),
        ") the admin token is in ",
        h("code", { text: ".flowledger/admin.token" }),
        "; ",
        h("code", { text: "flowledger keys create" }),
        " makes others.",
      ),
    ),
    alert,
    h("div", { class: "form-actions" }, button),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    alert.replaceChildren();
    if (!token) {
      alert.textContent = "Enter an API token.";
      input.focus();
      return;
    }
    button.disabled = true;
    input.setAttribute("aria-invalid", "false");
    try {
      const doc = await signIn(token);
      ctx.onSignedIn(doc);
      await ctx.navigate(next, { replace: true });
    } catch (err) {
      button.disabled = false;
      input.setAttribute("aria-invalid", "true");
      if (err instanceof ApiError) {
        const p = err.problem;
        alert.replaceChildren(h("strong", { text: p.title || "Sign-in failed" }), p.detail && p.detail !== p.title ? h("span", { text: `: ${p.detail}` }) : null);
      } else {
        alert.textContent = String((err && err.message) || err);
      }
      input.focus();
      input.select();
    }
  });

  const flash = ctx.flash;
  main.append(
    h(
      "section",
      { class: "signin panel" },
      h("h1", { text: "Sign in" }),
      flash ? h("p", { class: flash.alert ? "notice notice-warn" : "notice", role: flash.alert ? "alert" : "status", text: flash.text }) : null,
      h("p", { class: "muted", text: "The console uses the Flowledger API with your token's tenant and scopes." }),
      form,
    ),
  );
  return undefined;
}
