// The time-travel slider: <input type=range aria-label="Event seq"> over 0..last seq, the
// selected event's type and time beside it, and a "Live" button back to the end.

import { formatTime, h } from "../dom.js";

/**
 * `describe(seq)` -> {type, recorded_at} of that event (or null); `onChange(seq, {final})` on every
 * move (`final` false while dragging). Returns {element, setMax(n), setValue(n), value(), max()}.
 */
export function renderSlider({ max, value, describe, onChange }) {
  const input = h("input", {
    type: "range",
    id: "seq-slider",
    min: "0",
    max: String(Math.max(max, 0)),
    step: "1",
    value: String(value),
    "aria-label": "Event seq",
    "aria-describedby": "seq-readout",
  });
  input.value = String(value);
  const readout = h("output", { id: "seq-readout", for: "seq-slider", class: "seq-readout", "aria-live": "polite" });
  const live = h("button", {
    type: "button",
    class: "live-button",
    text: "Live",
    "aria-label": "Jump to the latest event (follow live)",
    onclick: () => {
      input.value = input.max;
      show();
      onChange(Number(input.value), { final: true });
    },
  });

  function show() {
    const seq = Number(input.value);
    const last = Number(input.max);
    const ev = describe(seq);
    readout.replaceChildren(
      h("strong", { text: `seq ${seq}` }),
      ` / ${last}`,
      ev ? " · " : "",
      ev ? h("code", { text: ev.type }) : "",
      ev ? ` · ${formatTime(ev.recorded_at)}` : "",
      seq === last ? h("span", { class: "live-tag", text: " · latest" }) : "",
    );
    input.setAttribute("aria-valuetext", `event ${seq} of ${last}${ev ? `: ${ev.type}` : ""}`);
    live.disabled = seq === last;
  }

  input.addEventListener("input", () => {
    show();
    onChange(Number(input.value), { final: false });
  });
  input.addEventListener("change", () => {
    show();
    onChange(Number(input.value), { final: true });
  });
  show();

  const element = h(
    "section",
    { class: "panel travel", "aria-label": "Time travel" },
    h("span", { class: "travel-label", text: "Time travel" }),
    input,
    readout,
    live,
  );
  return {
    element,
    setMax(n) {
      const following = Number(input.value) === Number(input.max);
      input.max = String(n);
      if (following) input.value = String(n);
      show();
    },
    setValue(n) {
      input.value = String(n);
      show();
    },
    value: () => Number(input.value),
    max: () => Number(input.max),
  };
}
