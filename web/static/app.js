// Khôi admin: small progressive enhancements; every page works without it
// except the browser upload, which needs progress events.
"use strict";

document.addEventListener("submit", (ev) => {
  const form = ev.target;
  const msg = form.dataset && form.dataset.confirm;
  if (msg && !window.confirm(msg)) ev.preventDefault();
});

// Keep the current page when switching language.
document.querySelectorAll("a[data-lang]").forEach((a) => {
  if (!a.getAttribute("href").includes("?")) {
    a.href = a.getAttribute("href") + "?back=" + encodeURIComponent(location.pathname + location.search);
  }
});

const upload = document.getElementById("upload");
if (upload) {
  upload.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const file = upload.elements.file.files[0];
    if (!file) return;
    const bar = upload.querySelector("progress");
    const status = upload.querySelector(".upload-status");
    const button = upload.querySelector("button");
    const q = new URLSearchParams({ name: upload.elements.name.value, note: upload.elements.note.value });
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/images/upload?" + q.toString());
    xhr.setRequestHeader("X-CSRF-Token", upload.dataset.csrf);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    bar.hidden = false;
    button.disabled = true;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        bar.value = Math.round((e.loaded * 100) / e.total);
        status.textContent = bar.value + "% (" + (e.loaded / 1048576).toFixed(1) + " / " + (e.total / 1048576).toFixed(1) + " MiB)";
      }
    };
    xhr.onload = () => {
      button.disabled = false;
      if (xhr.status === 200) {
        status.textContent = upload.dataset.done;
        location.href = "/images/" + encodeURIComponent(upload.elements.name.value);
      } else {
        let text = xhr.responseText;
        try { text = JSON.parse(text).error; } catch (_) { /* plain text */ }
        status.textContent = upload.dataset.failed + " " + text;
      }
    };
    xhr.onerror = () => { button.disabled = false; status.textContent = upload.dataset.failed; };
    xhr.send(file);
  });
}
