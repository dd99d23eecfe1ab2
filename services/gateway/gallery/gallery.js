// Placeholder /vision gallery: lists the latest images and selects one into an imageRef.
// Plain browser JS talking to the gateway's own /api/images routes; no framework, no build.
"use strict";

const LATEST_LIMIT = 36; // the seed's page size

const statusLine = document.getElementById("status");
const rows = document.querySelector("#images tbody");

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// Every API error has the shape {"error": {"code", "message", "remediation"}}.
async function callApi(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error;
    const message = error ? `${error.code}: ${error.message}` : `HTTP ${response.status}`;
    const hint = error && error.remediation && error.remediation.length ? ` (${error.remediation[0]})` : "";
    throw new Error(message + hint);
  }
  return body;
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderRow(item, index) {
  const tr = document.createElement("tr");
  tr.append(
    cell(String(index + 1)),
    cell(new Date(item.last_modified).toLocaleString()),
    cell(formatSize(item.size), "size"),
    cell(item.key, "key"),
  );
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Select";
  button.addEventListener("click", () => selectImage(item.key));
  const action = document.createElement("td");
  action.append(button);
  tr.append(action);
  return tr;
}

async function loadLatest() {
  showStatus("Loading…");
  try {
    const latest = await callApi(`/api/images/latest?limit=${LATEST_LIMIT}`);
    rows.replaceChildren(...latest.items.map(renderRow));
    const count = latest.items.length;
    showStatus(count ? `${count} image${count === 1 ? "" : "s"}` : "No images yet.");
  } catch (error) {
    showStatus(error.message, true);
  }
}

async function selectImage(key) {
  showStatus(`Selecting ${key}…`);
  try {
    const selected = await callApi("/api/images/select", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key }),
    });
    document.getElementById("image-ref").textContent = JSON.stringify(selected, null, 2);
    document.getElementById("preview").src = selected.imageRef.downloadUrl;
    document.getElementById("selection").hidden = false;
    showStatus(`Selected ${key}`);
  } catch (error) {
    showStatus(error.message, true);
  }
}

document.getElementById("refresh").addEventListener("click", loadLatest);
loadLatest();
