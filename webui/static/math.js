// Typesets LaTeX with KaTeX (served from webui/node_modules); without KaTeX the raw LaTeX stays readable.
(function () {
  "use strict";

  var DELIMITERS = [
    {left: "$$", right: "$$", display: true},
    {left: "\\[", right: "\\]", display: true},
    {left: "\\(", right: "\\)", display: false},
    {left: "$", right: "$", display: false}
  ];

  function available() {
    return typeof window.katex !== "undefined";
  }

  function warnMissing() {
    if (document.getElementById("vendor-missing") || document.getElementById("katex-failed")) { return; }
    var banner = document.createElement("div");
    banner.id = "katex-failed";
    banner.className = "banner warn";
    banner.setAttribute("role", "alert");
    banner.textContent = "KaTeX did not load, so math is shown as plain LaTeX. An operator can install it with " +
      "`npm ci --prefix webui`.";
    var main = document.getElementById("main");
    if (main) { main.parentNode.insertBefore(banner, main); }
  }

  // Render one formula into an element; false when KaTeX is not there (the caller shows the text).
  function renderInto(element, tex, display) {
    if (!available()) { return false; }
    window.katex.render(tex, element, {throwOnError: false, displayMode: !!display});
    return true;
  }

  function renderAll(root) {
    if (!root.querySelector(".tex, #prompt, .guidelines-body .math")) { return; }
    if (!available()) { warnMissing(); return; }
    root.querySelectorAll(".tex[data-tex]").forEach(function (element) {
      renderInto(element, element.getAttribute("data-tex"), false);
    });
    // Guidelines: the server's Markdown renderer kept $…$ and $$…$$ as .math.inline / .math.block.
    root.querySelectorAll(".guidelines-body .math").forEach(function (element) {
      renderInto(element, element.textContent, element.classList.contains("block"));
    });
    var prompt = root.querySelector("#prompt");
    if (prompt && typeof window.renderMathInElement === "function") {
      window.renderMathInElement(prompt, {delimiters: DELIMITERS, throwOnError: false});
    }
  }

  window.rewardhubMath = {available: available, renderInto: renderInto, renderAll: renderAll};
  document.addEventListener("DOMContentLoaded", function () { renderAll(document); });
})();
