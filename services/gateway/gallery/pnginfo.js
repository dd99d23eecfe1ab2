// PNG Info: the text chunks of a PNG (tEXt, zTXt, iTXt) and the generation settings they carry, read
// in the browser: ours (`kitty`, the sidecar JSON), AUTOMATIC1111's `parameters` infotext and
// ComfyUI's API-format `prompt` graph, each turned into the request fields the form takes.

/** The largest file PNG Info reads: a PNG far beyond any render is not worth loading into memory. */
export const MAX_PNG_BYTES = 50 * 1024 * 1024;

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const CHUNK_OVERHEAD = 12; // length, type, CRC
const TEXT_TYPES = new Set(["tEXt", "zTXt", "iTXt"]);

/**
 * Our scheduler names → AUTOMATIC1111's (sampler, "Schedule type"): a copy of
 * services/contracts/schema.py A1111_SAMPLERS (a browser test keeps the two equal).
 */
export const A1111_SAMPLERS = {
  euler: ["Euler", null],
  euler_a: ["Euler a", null],
  heun: ["Heun", null],
  lms: ["LMS", null],
  ddim: ["DDIM", null],
  pndm: ["PLMS", null],
  dpmpp_2m: ["DPM++ 2M", null],
  dpmpp_2m_karras: ["DPM++ 2M", "Karras"],
  dpmpp_sde: ["DPM++ SDE", null],
  unipc: ["UniPC", null],
};

/** A1111's names (any case) → ours, as schema.py SCHEDULER_ALIASES builds them. */
const SCHEDULER_ALIASES = {
  ...Object.fromEntries(
    Object.entries(A1111_SAMPLERS).map(([name, [sampler, schedule]]) => [
      (schedule ? `${sampler} ${schedule}` : sampler).toLowerCase(),
      name,
    ]),
  ),
  pndm: "pndm",
  "dpm++ 2m sde": "dpmpp_sde",
};

/**
 * Our scheduler names → ComfyUI's KSampler (sampler_name, scheduler): a copy of
 * services/images_service/engines/comfyui/graph.py COMFYUI_SAMPLERS (a browser test keeps them equal).
 */
export const COMFYUI_SAMPLERS = {
  euler: ["euler", "normal"],
  euler_a: ["euler_ancestral", "normal"],
  heun: ["heun", "normal"],
  lms: ["lms", "normal"],
  ddim: ["ddim", "ddim_uniform"],
  pndm: ["ipndm", "normal"],
  dpmpp_2m: ["dpmpp_2m", "normal"],
  dpmpp_2m_karras: ["dpmpp_2m", "karras"],
  dpmpp_sde: ["dpmpp_sde", "normal"],
  unipc: ["uni_pc", "normal"],
};

/** Nodes followed from a ComfyUI sampler back to its prompt, size or checkpoint, at most. */
const MAX_GRAPH_HOPS = 12;

/** What PNG Info refuses, with what to do about it (shown like the API's errors). */
export class PngInfoError extends Error {
  constructor(code, message, remediation = []) {
    super(message);
    this.name = "PngInfoError";
    this.code = code;
    this.remediation = remediation;
  }
}

function isPng(bytes) {
  return bytes.length >= PNG_SIGNATURE.length && PNG_SIGNATURE.every((byte, index) => bytes[index] === byte);
}

function latin1(bytes) {
  let text = "";
  const step = 0x8000; // fromCharCode takes its arguments on the stack
  for (let start = 0; start < bytes.length; start += step) {
    text += String.fromCharCode(...bytes.subarray(start, start + step));
  }
  return text;
}

async function inflate(bytes) {
  if (typeof DecompressionStream !== "function") throw new Error("this browser cannot inflate zTXt");
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * The complete chunks of `bytes` (a PNG, or its first part) in file order: `{type, data}`, and
 * `end` (the offset after the last complete one) and whether the image data has started.
 */
export function scanChunks(bytes) {
  const chunks = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = PNG_SIGNATURE.length;
  let reachedImageData = false;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1(bytes.subarray(offset + 4, offset + 8));
    if (type === "IDAT") reachedImageData = true;
    if (offset + length + CHUNK_OVERHEAD > bytes.length) break;
    chunks.push({ type, data: bytes.subarray(offset + 8, offset + 8 + length) });
    offset += length + CHUNK_OVERHEAD;
    if (type === "IEND") break;
  }
  return { chunks, end: offset, reachedImageData };
}

/** One text chunk as `[keyword, text]`; null for one that cannot be read. */
async function readTextChunk({ type, data }) {
  const nul = data.indexOf(0);
  if (nul < 1) return null;
  const keyword = latin1(data.subarray(0, nul));
  if (type === "tEXt") return [keyword, latin1(data.subarray(nul + 1))];
  if (type === "zTXt") return [keyword, latin1(await inflate(data.subarray(nul + 2)))];
  // iTXt: compression flag and method, language tag, translated keyword, then UTF-8 text.
  const isCompressed = data[nul + 1] === 1;
  const languageEnd = data.indexOf(0, nul + 3);
  const translatedEnd = languageEnd < 0 ? -1 : data.indexOf(0, languageEnd + 1);
  if (translatedEnd < 0) return null;
  const raw = data.subarray(translatedEnd + 1);
  return [keyword, new TextDecoder("utf-8").decode(isCompressed ? await inflate(raw) : raw)];
}

/** Every text chunk of a PNG's bytes, by keyword (the first of a name wins, as Pillow's `.text` keeps). */
export async function readTextChunks(bytes) {
  const texts = {};
  for (const chunk of scanChunks(bytes).chunks) {
    if (!TEXT_TYPES.has(chunk.type)) continue;
    try {
      const entry = await readTextChunk(chunk);
      if (entry && !(entry[0] in texts)) texts[entry[0]] = entry[1];
    } catch {
      // A chunk that does not inflate is skipped; the others may still carry the settings.
    }
  }
  return texts;
}

/**
 * The text chunks of the PNG at `url`, read only up to its image data (where ours, A1111's and
 * ComfyUI's are), then the download is dropped.
 */
export async function fetchTextChunks(url, { signal } = {}) {
  const response = await fetch(url, { signal });
  if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
  const reader = response.body.getReader();
  let bytes = new Uint8Array(0);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (value) {
        const joined = new Uint8Array(bytes.length + value.length);
        joined.set(bytes);
        joined.set(value, bytes.length);
        bytes = joined;
      }
      if (done || (bytes.length >= PNG_SIGNATURE.length && !isPng(bytes))) break;
      if (scanChunks(bytes).reachedImageData) break;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return isPng(bytes) ? readTextChunks(bytes) : {};
}

// --- AUTOMATIC1111 -------------------------------------------------------------------------------
/** One `Key: value` of an infotext's settings line; a value may be JSON-quoted (A1111's `quote`). */
const INFOTEXT_PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;
/** A settings line has at least this many `Key: value` pairs (as A1111's parser asks). */
const MIN_INFOTEXT_PARAMS = 3;
const NEGATIVE_PREFIX = "Negative prompt:";
const LORA_TAG = /<lora:([^:>]+)(?::([-+]?[\d.]+))?[^>]*>/gi;

function unquote(value) {
  const trimmed = value.trim();
  if (!trimmed.startsWith('"')) return trimmed;
  try {
    return JSON.parse(trimmed);
  } catch {
    return trimmed;
  }
}

function numberOrUndefined(value, parse = Number) {
  const parsed = parse(value);
  return Number.isFinite(parsed) ? parsed : undefined;
}

/** Our scheduler name for an A1111 sampler and schedule type ("Automatic" means the sampler's own). */
export function schedulerFromA1111(sampler, schedule) {
  if (!sampler) return undefined;
  const withSchedule = schedule && schedule !== "Automatic" ? `${sampler} ${schedule}` : sampler;
  return SCHEDULER_ALIASES[withSchedule.toLowerCase()] || SCHEDULER_ALIASES[sampler.toLowerCase()];
}

/** A1111's `parameters` text → request fields, and `unread` naming what has no field of ours. */
export function parseInfotext(text) {
  const lines = String(text).trim().split("\n");
  const params = {};
  const last = lines[lines.length - 1] || "";
  const pairs = [...last.matchAll(INFOTEXT_PARAM)];
  if (lines.length && pairs.length >= MIN_INFOTEXT_PARAMS) {
    lines.pop();
    for (const [, key, value] of pairs) params[key.trim()] = unquote(value);
  }
  const prompt = [];
  const negative = [];
  let target = prompt;
  for (const line of lines) {
    if (line.startsWith(NEGATIVE_PREFIX)) {
      target = negative;
      target.push(line.slice(NEGATIVE_PREFIX.length).trim());
    } else {
      target.push(line);
    }
  }
  const fields = {};
  const loras = [];
  fields.prompt = prompt
    .join("\n")
    .replace(LORA_TAG, (_, name, weight) => {
      loras.push(weight === undefined ? { name } : { name, weight: Number(weight) });
      return "";
    })
    .replace(/ {2,}/g, " ")
    .replace(/ +,/g, ",")
    .trim();
  if (negative.length) fields.negative_prompt = negative.join("\n").trim();
  if (loras.length) fields.loras = loras;
  fields.steps = numberOrUndefined(params.Steps, (v) => Number.parseInt(v, 10));
  fields.cfg = numberOrUndefined(params["CFG scale"]);
  fields.seed = numberOrUndefined(params.Seed, (v) => Number.parseInt(v, 10));
  const size = /^(\d+)x(\d+)$/.exec(params.Size || "");
  if (size) Object.assign(fields, { width: Number(size[1]), height: Number(size[2]) });
  if (params.Model) fields.model = params.Model;
  const unread = [];
  if (params.Sampler) {
    fields.scheduler = schedulerFromA1111(params.Sampler, params["Schedule type"]);
    if (!fields.scheduler) unread.push(`sampler ${params.Sampler}`);
  }
  if (params["Hires upscale"]) {
    fields.hires = {
      scale: Number(params["Hires upscale"]),
      strength: numberOrUndefined(params["Denoising strength"]),
      steps: numberOrUndefined(params["Hires steps"], (v) => Number.parseInt(v, 10)),
      upscaler: params["Hires upscaler"],
    };
  }
  return { fields: withoutEmpty(fields), unread, params };
}

// --- ComfyUI -------------------------------------------------------------------------------------
const SAMPLER_NODES = ["KSampler", "KSamplerAdvanced", "SamplerCustom"];
const SEED_INPUTS = ["seed", "noise_seed"];

function isLink(value) {
  return Array.isArray(value) && value.length === 2 && (typeof value[0] === "string" || typeof value[0] === "number");
}

/** Our scheduler name for a KSampler's sampler_name and scheduler. */
export function schedulerFromComfyUI(samplerName, schedule) {
  const entries = Object.entries(COMFYUI_SAMPLERS);
  const exact = entries.find(([, [name, kind]]) => name === samplerName && kind === schedule);
  if (exact) return exact[0];
  const sameSampler = entries.find(([, [name, kind]]) => name === samplerName && kind !== "karras");
  return schedule === "karras" ? undefined : sameSampler && sameSampler[0];
}

/**
 * ComfyUI's API-format `prompt` graph → request fields: the first sampler's seed, steps, cfg and
 * sampler, the texts wired to its positive and negative inputs, the latent's size, the checkpoint
 * (its file name without extension, as a model hint) and the LoRA loaders on the model's path.
 */
export function parseComfyPrompt(graph) {
  if (!graph || typeof graph !== "object") return null;
  const nodes = graph;
  const sampler = SAMPLER_NODES.map((type) => Object.values(nodes).find((node) => node && node.class_type === type)).find(Boolean);
  if (!sampler) return null;
  const inputs = sampler.inputs || {};

  /** A scalar input, following links to primitive nodes (a seed widget turned into an input). */
  function scalar(value, names, hops = 0) {
    if (!isLink(value)) return value;
    const node = nodes[String(value[0])];
    if (!node || hops > MAX_GRAPH_HOPS) return undefined;
    const source = node.inputs || {};
    const name = names.find((key) => key in source);
    return name === undefined ? undefined : scalar(source[name], names, hops + 1);
  }

  /** The text of the encoder a conditioning input comes from (through any conditioning nodes). */
  function textOf(link, hops = 0) {
    if (!isLink(link) || hops > MAX_GRAPH_HOPS) return undefined;
    const node = nodes[String(link[0])];
    if (!node) return undefined;
    const source = node.inputs || {};
    for (const name of ["text", "text_g", "prompt"]) {
      if (name in source) return scalar(source[name], ["text", "value", "string", "prompt"]);
    }
    const next = source.conditioning || source.conditioning_1 || source.positive;
    return textOf(next, hops + 1);
  }

  /** Width and height of the first node on the latent's path that has both. */
  function sizeOf(link, hops = 0) {
    if (!isLink(link) || hops > MAX_GRAPH_HOPS) return {};
    const node = nodes[String(link[0])];
    if (!node) return {};
    const source = node.inputs || {};
    const width = scalar(source.width, ["width", "value", "int"]);
    const height = scalar(source.height, ["height", "value", "int"]);
    if (Number.isFinite(width) && Number.isFinite(height)) return { width, height };
    return sizeOf(source.samples || source.latent_image || source.latent, hops + 1);
  }

  /** The checkpoint and the LoRAs on the model's path, from the sampler back to the loader. */
  function modelPath(link) {
    const loras = [];
    let model;
    for (let hops = 0; isLink(link) && hops <= MAX_GRAPH_HOPS; hops += 1) {
      const node = nodes[String(link[0])];
      if (!node) break;
      const source = node.inputs || {};
      if (source.lora_name) {
        const weight = scalar(source.strength_model, ["value", "float"]);
        loras.unshift({ name: stem(source.lora_name), ...(Number.isFinite(weight) && { weight }) });
      }
      if (source.ckpt_name) {
        model = stem(source.ckpt_name);
        break;
      }
      link = source.model;
    }
    if (model === undefined) {
      const loader = Object.values(nodes).find((node) => node && node.inputs && node.inputs.ckpt_name);
      if (loader) model = stem(loader.inputs.ckpt_name);
    }
    return { model, loras };
  }

  const samplerName = scalar(inputs.sampler_name, ["sampler_name", "value"]);
  const schedule = scalar(inputs.scheduler, ["scheduler", "value"]);
  const { model, loras } = modelPath(inputs.model);
  const fields = {
    prompt: textOf(inputs.positive),
    negative_prompt: textOf(inputs.negative),
    steps: scalar(inputs.steps, ["steps", "value", "int"]),
    cfg: scalar(inputs.cfg, ["cfg", "value", "float"]),
    seed: scalar(inputs[SEED_INPUTS.find((name) => name in inputs)], [...SEED_INPUTS, "value", "int"]),
    ...sizeOf(inputs.latent_image),
    model,
    loras: loras.length ? loras : undefined,
    scheduler: samplerName ? schedulerFromComfyUI(samplerName, schedule) : undefined,
  };
  const unread = samplerName && !fields.scheduler ? [`sampler ${samplerName} (${schedule})`] : [];
  return { fields: withoutEmpty(fields), unread };
}

/** `models/sd_xl_base_1.0.safetensors` → `sd_xl_base_1.0`. */
function stem(path) {
  return String(path).split(/[\\/]/).pop().replace(/\.(safetensors|ckpt|pt|pth|bin)$/i, "");
}

// --- ours ----------------------------------------------------------------------------------------
const REQUEST_FIELDS = ["prompt", "negative_prompt", "model", "width", "height", "steps", "cfg", "scheduler", "loras", "hires", "preset", "quality", "refiner"];

/** Our `kitty` chunk (the sidecar) → the request fields it recorded, and the sidecar itself. */
export function parseSidecar(text) {
  const sidecar = JSON.parse(text);
  const request = (sidecar && sidecar.request) || {};
  const fields = Object.fromEntries(REQUEST_FIELDS.map((name) => [name, request[name]]));
  fields.seed = sidecar.seed ?? request.seed;
  if (fields.loras && !fields.loras.length) fields.loras = undefined;
  return { fields: withoutEmpty(fields), unread: [], sidecar };
}

function withoutEmpty(fields) {
  return Object.fromEntries(
    Object.entries(fields).filter(([, value]) => value !== undefined && value !== null && value !== "" && !Number.isNaN(value)),
  );
}

// --- one file ------------------------------------------------------------------------------------
const SOURCES = {
  kitty: "KITTY",
  parameters: "AUTOMATIC1111",
  prompt: "ComfyUI",
};

/**
 * The settings a PNG's text chunks carry: `{source, fields, unread, infotext, sidecar}`, from the
 * first that reads of `kitty`, `parameters`, ComfyUI's `prompt`; null when none carries any.
 */
export function settingsFromChunks(texts) {
  const infotext = texts.parameters;
  const readers = {
    kitty: (text) => parseSidecar(text),
    parameters: (text) => {
      const parsed = parseInfotext(text);
      return parsed.fields.prompt || Object.keys(parsed.params).length ? parsed : null;
    },
    prompt: (text) => parseComfyPrompt(JSON.parse(text)),
  };
  for (const [name, read] of Object.entries(readers)) {
    if (typeof texts[name] !== "string") continue;
    try {
      const parsed = read(texts[name]);
      if (parsed) return { source: SOURCES[name], infotext, sidecar: null, ...parsed };
    } catch {
      // Not this one's format (another tool's `prompt` chunk, a broken sidecar): try the next.
    }
  }
  return null;
}

function formatMegabytes(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** The settings a dropped file carries, or a PngInfoError saying why there are none and what to do. */
export async function readSettingsFromFile(file) {
  const name = file.name || "The file";
  if (file.size > MAX_PNG_BYTES) {
    throw new PngInfoError(
      "FILE_TOO_LARGE",
      `${name} is ${formatMegabytes(file.size)}: PNG Info reads files up to ${formatMegabytes(MAX_PNG_BYTES)}.`,
      ["Drop the PNG the generator saved, not an enlarged or merged copy."],
    );
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (!isPng(bytes)) {
    throw new PngInfoError("NOT_A_PNG", `${name} is not a PNG, so it carries no settings this page can read.`, [
      "Drop a PNG made by KITTY, AUTOMATIC1111 or ComfyUI; JPEG and WebP copies usually lose them.",
      "To start from this picture instead, choose it under “Start from a picture”.",
    ]);
  }
  const texts = await readTextChunks(bytes);
  const settings = settingsFromChunks(texts);
  if (!settings) {
    const only = texts.workflow ? " It holds a ComfyUI workflow but not its API-format prompt." : "";
    throw new PngInfoError("NO_SETTINGS", `${name} carries no generation settings.${only}`, [
      "Drop the original PNG: a copy re-saved by an editor or a chat app drops them.",
      "KITTY, AUTOMATIC1111 (parameters) and ComfyUI (prompt) PNGs are read.",
    ]);
  }
  return settings;
}
