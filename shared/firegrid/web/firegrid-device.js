// FireGrid's browser device SDK: one dependency-free ES module (docs/devices.md).
//
// What shared/firegrid/client does in Python, for a page: authenticate, ask for a
// cycle, download the checkpoint (safetensors) and the plan's "layers" variant (a
// FireGrid layer spec, docs/protocol.md), train it here with the recipe in
// client_config, report diff = params_at_download - params_after_training (float32
// safetensors, base64), post metrics. The engine below implements forward, backward
// and torch's SGD for the layers a spec may hold; its gradients are tested equal to
// torch autograd's (tests/integration/test_browser_engine.py).

export const PLAN_VARIANT = "layers";
export const SPEC_FORMAT = "firegrid-layers";

// -- safetensors ----------------------------------------------------------------------

const DTYPES = {
  F32: { bytes: 4, array: Float32Array, read: "getFloat32" },
  F64: { bytes: 8, array: Float64Array, read: "getFloat64" },
  I32: { bytes: 4, array: Int32Array, read: "getInt32" },
  I64: { bytes: 8, array: BigInt64Array, read: "getBigInt64" },
};

/** Tensors of a safetensors file: Map name -> {dtype, shape, data (a typed array)}. */
export function decodeSafetensors(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 8) throw new Error("not safetensors: shorter than its header length");
  const headerLength = Number(view.getBigUint64(0, true));
  if (8 + headerLength > bytes.byteLength) throw new Error("not safetensors: header too long");
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const tensors = new Map();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const dtype = DTYPES[entry.dtype];
    if (dtype === undefined) throw new Error(`tensor '${name}': dtype ${entry.dtype} is not supported`);
    const [start, end] = entry.data_offsets;
    const count = (end - start) / dtype.bytes;
    if (count !== size(entry.shape)) throw new Error(`tensor '${name}': size does not match its shape`);
    const data = new dtype.array(count);
    const base = 8 + headerLength + start;
    for (let i = 0; i < count; i++) data[i] = view[dtype.read](base + i * dtype.bytes, true);
    tensors.set(name, { dtype: entry.dtype, shape: entry.shape.slice(), data });
  }
  return tensors;
}

/** Safetensors bytes of Map name -> {shape, data: Float32Array} (float32, little-endian). */
export function encodeSafetensors(tensors) {
  const header = {};
  let offset = 0;
  for (const [name, tensor] of tensors) {
    const length = tensor.data.length * 4;
    header[name] = { dtype: "F32", shape: tensor.shape, data_offsets: [offset, offset + length] };
    offset += length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const tensor of tensors.values()) {
    for (let i = 0; i < tensor.data.length; i++, at += 4) view.setFloat32(at, tensor.data[i], true);
  }
  return out;
}

export function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function size(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

// -- the engine: a chain of layers, forward and backward ------------------------------

function linear(layer, params) {
  const weight = params.get(layer.weight);
  const bias = layer.bias ? params.get(layer.bias) : null;
  const [outputs, inputs] = weight.shape;
  return {
    outShape: (shape) => {
      if (shape[shape.length - 1] !== inputs) throw new Error(`${layer.source}: expects ${inputs} features`);
      return [...shape.slice(0, -1), outputs];
    },
    forward(x, n, inShape) {
      const rows = (n * size(inShape)) / inputs;
      const y = new Float32Array(rows * outputs);
      const w = weight.data;
      for (let r = 0; r < rows; r++) {
        const xr = r * inputs;
        for (let o = 0; o < outputs; o++) {
          let acc = bias ? bias.data[o] : 0;
          const wo = o * inputs;
          for (let i = 0; i < inputs; i++) acc += x[xr + i] * w[wo + i];
          y[r * outputs + o] = acc;
        }
      }
      this.x = x;
      this.rows = rows;
      return y;
    },
    backward(gy, grads, needInput) {
      const { x, rows } = this;
      const w = weight.data;
      const gw = grads.get(layer.weight);
      const gb = bias ? grads.get(layer.bias) : null;
      const gx = needInput ? new Float32Array(rows * inputs) : null;
      for (let r = 0; r < rows; r++) {
        const xr = r * inputs;
        for (let o = 0; o < outputs; o++) {
          const g = gy[r * outputs + o];
          if (g === 0) continue;
          if (gb) gb[o] += g;
          const wo = o * inputs;
          for (let i = 0; i < inputs; i++) {
            gw[wo + i] += g * x[xr + i];
            if (gx) gx[xr + i] += g * w[wo + i];
          }
        }
      }
      return gx;
    },
  };
}

function windowed(inShape, kernel, stride, padding) {
  const [channels, height, width] = inShape;
  const outHeight = Math.floor((height + 2 * padding[0] - kernel[0]) / stride[0]) + 1;
  const outWidth = Math.floor((width + 2 * padding[1] - kernel[1]) / stride[1]) + 1;
  return { channels, height, width, outHeight, outWidth };
}

// Forward and backward walk the same loop nest, spelled out in each: a shared walker
// would cost a function call per multiply-add in the hot loop.
function conv2d(layer, params) {
  const weight = params.get(layer.weight);
  const bias = layer.bias ? params.get(layer.bias) : null;
  const [outChannels, inChannels, kh, kw] = weight.shape;
  const [sh, sw] = layer.stride;
  const [ph, pw] = layer.padding;
  let dims;
  return {
    outShape(shape) {
      if (shape.length !== 3 || shape[0] !== inChannels) {
        throw new Error(`${layer.source}: expects ${inChannels} input channels, got shape ${shape}`);
      }
      dims = windowed(shape, [kh, kw], layer.stride, layer.padding);
      return [outChannels, dims.outHeight, dims.outWidth];
    },
    forward(x, n) {
      const { height: H, width: W, outHeight: OH, outWidth: OW } = dims;
      const y = new Float32Array(n * outChannels * OH * OW);
      const w = weight.data;
      for (let b = 0; b < n; b++) {
        for (let o = 0; o < outChannels; o++) {
          for (let oh = 0; oh < OH; oh++) {
            for (let ow = 0; ow < OW; ow++) {
              let acc = bias ? bias.data[o] : 0;
              for (let c = 0; c < inChannels; c++) {
                const xc = (b * inChannels + c) * H;
                const wc = (o * inChannels + c) * kh;
                for (let i = 0; i < kh; i++) {
                  const ih = oh * sh - ph + i;
                  if (ih < 0 || ih >= H) continue;
                  for (let j = 0; j < kw; j++) {
                    const iw = ow * sw - pw + j;
                    if (iw < 0 || iw >= W) continue;
                    acc += x[(xc + ih) * W + iw] * w[(wc + i) * kw + j];
                  }
                }
              }
              y[((b * outChannels + o) * OH + oh) * OW + ow] = acc;
            }
          }
        }
      }
      this.x = x;
      this.n = n;
      return y;
    },
    backward(gy, grads, needInput) {
      const { x, n } = this;
      const { height: H, width: W, outHeight: OH, outWidth: OW } = dims;
      const w = weight.data;
      const gw = grads.get(layer.weight);
      const gb = bias ? grads.get(layer.bias) : null;
      const gx = needInput ? new Float32Array(n * inChannels * H * W) : null;
      for (let b = 0; b < n; b++) {
        for (let o = 0; o < outChannels; o++) {
          for (let oh = 0; oh < OH; oh++) {
            for (let ow = 0; ow < OW; ow++) {
              const g = gy[((b * outChannels + o) * OH + oh) * OW + ow];
              if (g === 0) continue;
              if (gb) gb[o] += g;
              for (let c = 0; c < inChannels; c++) {
                const xc = (b * inChannels + c) * H;
                const wc = (o * inChannels + c) * kh;
                for (let i = 0; i < kh; i++) {
                  const ih = oh * sh - ph + i;
                  if (ih < 0 || ih >= H) continue;
                  for (let j = 0; j < kw; j++) {
                    const iw = ow * sw - pw + j;
                    if (iw < 0 || iw >= W) continue;
                    gw[(wc + i) * kw + j] += g * x[(xc + ih) * W + iw];
                    if (gx) gx[(xc + ih) * W + iw] += g * w[(wc + i) * kw + j];
                  }
                }
              }
            }
          }
        }
      }
      return gx;
    },
  };
}

function pool2d(layer, average) {
  const [kh, kw] = layer.kernel_size;
  const [sh, sw] = layer.stride;
  const [ph, pw] = layer.padding;
  let dims;
  return {
    outShape(shape) {
      if (shape.length !== 3) throw new Error(`${layer.source}: expects [channels, height, width]`);
      dims = windowed(shape, layer.kernel_size, layer.stride, layer.padding);
      return [dims.channels, dims.outHeight, dims.outWidth];
    },
    forward(x, n) {
      const { channels, height: H, width: W, outHeight: OH, outWidth: OW } = dims;
      const y = new Float32Array(n * channels * OH * OW);
      const picked = average ? null : new Int32Array(y.length);
      for (let plane = 0; plane < n * channels; plane++) {
        for (let oh = 0; oh < OH; oh++) {
          for (let ow = 0; ow < OW; ow++) {
            let best = -Infinity;
            let at = -1;
            let sum = 0;
            for (let i = 0; i < kh; i++) {
              const ih = oh * sh - ph + i;
              if (ih < 0 || ih >= H) continue;
              for (let j = 0; j < kw; j++) {
                const iw = ow * sw - pw + j;
                if (iw < 0 || iw >= W) continue;
                const index = (plane * H + ih) * W + iw;
                const value = x[index];
                sum += value;
                if (value > best || Number.isNaN(value)) {
                  best = value;
                  at = index;
                }
              }
            }
            const out = (plane * OH + oh) * OW + ow;
            if (average) y[out] = sum / (kh * kw);
            else {
              y[out] = best;
              picked[out] = at;
            }
          }
        }
      }
      this.picked = picked;
      this.inputLength = x.length;
      return y;
    },
    backward(gy) {
      const gx = new Float32Array(this.inputLength);
      if (!average) {
        for (let out = 0; out < gy.length; out++) gx[this.picked[out]] += gy[out];
        return gx;
      }
      const { channels, height: H, width: W, outHeight: OH, outWidth: OW } = dims;
      const n = gy.length / (channels * OH * OW);
      for (let plane = 0; plane < n * channels; plane++) {
        for (let oh = 0; oh < OH; oh++) {
          for (let ow = 0; ow < OW; ow++) {
            const g = gy[(plane * OH + oh) * OW + ow] / (kh * kw);
            for (let i = 0; i < kh; i++) {
              for (let j = 0; j < kw; j++) gx[(plane * H + oh * sh + i) * W + ow * sw + j] += g;
            }
          }
        }
      }
      return gx;
    },
  };
}

function relu() {
  return {
    outShape: (shape) => shape,
    forward(x) {
      const y = new Float32Array(x.length);
      for (let i = 0; i < x.length; i++) y[i] = x[i] > 0 ? x[i] : 0;
      this.y = y;
      return y;
    },
    backward(gy) {
      const gx = new Float32Array(gy.length);
      for (let i = 0; i < gy.length; i++) gx[i] = this.y[i] > 0 ? gy[i] : 0;
      return gx;
    },
  };
}

function reshape(layer) {
  return {
    outShape(shape) {
      if (size(shape) !== size(layer.shape)) throw new Error(`${layer.source}: cannot reshape ${shape} to ${layer.shape}`);
      return layer.shape;
    },
    forward: (x) => x,
    backward: (gy) => gy,
  };
}

const LAYERS = {
  linear,
  conv2d,
  relu,
  reshape,
  max_pool2d: (layer) => pool2d(layer, false),
  avg_pool2d: (layer) => pool2d(layer, true),
};

const LOSSES = {
  /** Mean softmax cross-entropy of logits [n, classes] and integer labels. */
  cross_entropy(out, labels, n) {
    const classes = out.length / n;
    const grad = new Float32Array(out.length);
    let total = 0;
    for (let b = 0; b < n; b++) {
      const row = b * classes;
      let max = -Infinity;
      for (let k = 0; k < classes; k++) max = Math.max(max, out[row + k]);
      let sum = 0;
      for (let k = 0; k < classes; k++) sum += Math.exp(out[row + k] - max);
      const label = Number(labels[b]);
      if (!(label >= 0 && label < classes)) throw new Error(`label ${labels[b]} is not a class`);
      total += Math.log(sum) + max - out[row + label];
      for (let k = 0; k < classes; k++) {
        grad[row + k] = (Math.exp(out[row + k] - max) / sum - (k === label ? 1 : 0)) / n;
      }
    }
    return { loss: total / n, grad };
  },
  /** Mean squared error over every output value (torch's mse_loss). */
  mse(out, targets) {
    const grad = new Float32Array(out.length);
    let total = 0;
    for (let i = 0; i < out.length; i++) {
      const d = out[i] - targets[i];
      total += d * d;
      grad[i] = (2 * d) / out.length;
    }
    return { loss: total / out.length, grad };
  },
};

/** A layer spec bound to its parameters (Map name -> {shape, data: Float32Array}). */
export class LayerModel {
  constructor(spec, params) {
    if (spec.format !== SPEC_FORMAT || spec.version !== 1) {
      throw new Error(`not a ${SPEC_FORMAT} v1 plan: ${spec.format} v${spec.version}`);
    }
    for (const [name, described] of Object.entries(spec.parameters)) {
      const tensor = params.get(name);
      if (!tensor || tensor.dtype !== "F32" || tensor.shape.join() !== described.shape.join()) {
        throw new Error(`the checkpoint's '${name}' is not float32 [${described.shape}]`);
      }
    }
    this.spec = spec;
    this.params = params;
    this.layers = spec.layers.map((layer) => {
      const make = LAYERS[layer.op];
      if (make === undefined) throw new Error(`${layer.source}: layer '${layer.op}' is not supported`);
      return make(layer, params);
    });
    let shape = spec.input_shape;
    this.shapes = [shape];
    for (const layer of this.layers) this.shapes.push((shape = layer.outShape(shape)));
    if (shape.join() !== spec.output_shape.join()) {
      throw new Error(`the plan outputs [${shape}], it declares [${spec.output_shape}]`);
    }
    this.inputSize = size(spec.input_shape);
  }

  /** The outputs for ``n`` samples ``x`` (Float32Array of n * input size). */
  forward(x, n) {
    let out = x;
    this.layers.forEach((layer, i) => (out = layer.forward(out, n, this.shapes[i])));
    return out;
  }

  /** The batch's mean loss and its gradient for every parameter (Map name -> Float32Array). */
  gradients(x, y, n, lossName = "cross_entropy") {
    const lossFn = LOSSES[lossName];
    if (lossFn === undefined) throw new Error(`loss '${lossName}' is not supported`);
    const { loss, grad } = lossFn(this.forward(x, n), y, n);
    const grads = new Map();
    for (const name of Object.keys(this.spec.parameters)) {
      grads.set(name, new Float32Array(this.params.get(name).data.length));
    }
    let g = grad;
    // The first layer's input gradient is never used: it is not computed.
    for (let i = this.layers.length - 1; i >= 0; i--) g = this.layers[i].backward(g, grads, i > 0);
    return { loss, grads };
  }
}

// -- training: client_config's recipe, as firegrid/client/training.py ------------------

/** A small seeded generator (mulberry32): the same shard order for the same seed. */
export function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function permutation(count, random) {
  const order = Array.from({ length: count }, (_, i) => i);
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** ``max_updates`` if set, else ``epochs`` (default 1) passes over the data. */
export function stepsFor(count, config) {
  if (config.max_updates) return Number(config.max_updates);
  const batchSize = Number(config.batch_size ?? 32);
  return Number(config.epochs ?? 1) * Math.ceil(count / batchSize);
}

/** torch.optim.SGD's step (momentum without dampening, weight decay) plus FedProx's pull. */
export class SGD {
  constructor(params, config) {
    this.params = params;
    this.lr = Number(config.lr ?? 0.01);
    this.momentum = Number(config.momentum ?? 0);
    this.decay = Number(config.weight_decay ?? 0);
    this.mu = Number(config.fedprox_mu ?? 0);
    this.anchor = new Map([...params].map(([name, t]) => [name, Float32Array.from(t.data)]));
    this.buffers = new Map();
  }

  step(grads) {
    for (const [name, grad] of grads) {
      const p = this.params.get(name).data;
      const anchor = this.anchor.get(name);
      let buffer = this.buffers.get(name);
      const first = buffer === undefined;
      if (first && this.momentum !== 0) this.buffers.set(name, (buffer = new Float32Array(p.length)));
      for (let i = 0; i < p.length; i++) {
        let d = grad[i] + this.decay * p[i] + this.mu * (p[i] - anchor[i]);
        if (this.momentum !== 0) d = buffer[i] = first ? d : this.momentum * buffer[i] + d;
        p[i] -= this.lr * d;
      }
    }
  }
}

function rows(array, order, width) {
  const out = new array.constructor(order.length * width);
  order.forEach((row, i) => out.set(array.subarray(row * width, (row + 1) * width), i * width));
  return out;
}

/**
 * Train ``spec`` from ``checkpoint`` (safetensors bytes) on ``data`` = {x: Float32Array
 * (n * input size), y: labels (n) or targets} with client_config's recipe: the diff
 * (safetensors bytes), the sample count and the mean step time.
 */
export function train(spec, checkpoint, data, config, { seed = 0 } = {}) {
  const params = decodeSafetensors(checkpoint);
  const before = new Map([...params].map(([name, t]) => [name, Float32Array.from(t.data)]));
  const model = new LayerModel(spec, params);
  const width = model.inputSize;
  const count = data.x.length / width;
  const targets = ArrayBuffer.isView(data.y) ? data.y : Float64Array.from(data.y);
  const targetWidth = targets.length / count;
  const batchSize = Math.min(Number(config.batch_size ?? 32), count);
  const optimizer = new SGD(params, config);
  const random = seededRandom(seed);
  let order = permutation(count, random);
  const steps = stepsFor(count, config);
  const started = performance.now();
  for (let step = 0; step < steps; step++) {
    let start = (step * batchSize) % count;
    if (start + batchSize > count) {
      order = permutation(count, random);
      start = 0;
    }
    const batch = order.slice(start, start + batchSize);
    const { grads } = model.gradients(
      rows(data.x, batch, width), rows(targets, batch, targetWidth), batch.length,
      config.loss ?? "cross_entropy",
    );
    optimizer.step(grads);
  }
  const stepSeconds = (performance.now() - started) / 1000 / Math.max(steps, 1);
  const diff = new Map();
  for (const [name, tensor] of params) {
    const old = before.get(name);
    diff.set(name, { shape: tensor.shape, data: old.map((value, i) => value - tensor.data[i]) });
  }
  return { diff: encodeSafetensors(diff), numSamples: count, steps, stepSeconds };
}

/** Top-1 accuracy of ``checkpoint`` on {x, y}. */
export function accuracy(spec, checkpoint, data) {
  const model = new LayerModel(spec, decodeSafetensors(checkpoint));
  const n = data.y.length;
  const out = model.forward(data.x, n);
  const classes = out.length / n;
  let right = 0;
  for (let b = 0; b < n; b++) {
    let best = 0;
    for (let k = 1; k < classes; k++) if (out[b * classes + k] > out[b * classes + best]) best = k;
    if (best === Number(data.y[b])) right++;
  }
  return right / n;
}

// -- the protocol, as firegrid/client/protocol.py -------------------------------------

/** A 4xx/5xx answer: ``status``, the server's ``code`` and message. */
export class ServerError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** The device API (function ``model-centric``); ``baseUrl`` ends before the function name. */
export class DeviceClient {
  constructor(baseUrl, { inlineLimitBytes = 16 * 2 ** 20, fetch: fetchFn = (...args) => globalThis.fetch(...args) } = {}) {
    this.url = `${baseUrl.replace(/\/$/, "")}/model-centric`;
    this.inlineLimitBytes = inlineLimitBytes;
    this.fetch = fetchFn;
  }

  async call(method, path, { json, query } = {}) {
    const url = new URL(`${this.url}/${path}`);
    for (const [key, value] of Object.entries(query ?? {})) url.searchParams.set(key, value);
    const init = { method };
    if (json !== undefined) {
      init.headers = { "Content-Type": "application/json" };
      init.body = JSON.stringify(json);
    }
    const response = await this.fetch(url, init);
    if (!response.ok) {
      let body = {};
      try {
        body = await response.json();
      } catch {
        body = { error: response.statusText, code: "http_error" };
      }
      throw new ServerError(response.status, body.code ?? "http_error", body.error ?? "");
    }
    return response;
  }

  async authenticate(model, version = null, token = null) {
    const body = { model_name: model };
    if (version !== null) body.model_version = version;
    if (token !== null) body.auth_token = token;
    return (await (await this.call("POST", "authenticate", { json: body })).json()).worker_id;
  }

  /** The accepted assignment, or the rejection ({status, reason, timeout?}). */
  async cycleRequest(workerId, model, version = null, extra = {}) {
    const body = { worker_id: workerId, model, version, ...extra };
    const reply = await (await this.call("POST", "cycle-request", { json: body })).json();
    if (reply.status !== "accepted") return reply;
    return {
      workerId,
      requestKey: reply.request_key,
      cycleId: Number(reply.cycle_id),
      modelId: reply.model_id,
      plans: reply.plans,
      clientConfig: reply.client_config,
    };
  }

  async getModel(assignment) {
    const query = { worker_id: assignment.workerId, request_key: assignment.requestKey, model_id: assignment.modelId };
    return new Uint8Array(await (await this.call("GET", "get-model", { query })).arrayBuffer());
  }

  /** The plan's ``layers`` variant (the parsed layer spec). */
  async getPlan(assignment, name = "training_plan") {
    const query = {
      worker_id: assignment.workerId,
      request_key: assignment.requestKey,
      plan_id: assignment.plans[name],
      receive_operations_as: PLAN_VARIANT,
    };
    return (await this.call("GET", "get-plan", { query })).json();
  }

  async report(assignment, diff, numSamples) {
    const body = { worker_id: assignment.workerId, request_key: assignment.requestKey, num_samples: numSamples };
    if (diff.length <= this.inlineLimitBytes) body.diff = toBase64(diff);
    else {
      await this.upload(assignment, diff);
      body.uploaded = true;
    }
    await this.call("POST", "report", { json: body });
  }

  async upload(assignment, diff) {
    const json = { worker_id: assignment.workerId, request_key: assignment.requestKey };
    const grant = await (await this.call("POST", "report-upload-url", { json })).json();
    const put = await this.fetch(grant.upload_url, { method: grant.method, headers: grant.headers, body: diff });
    if (!put.ok) throw new ServerError(put.status, "upload_failed", await put.text());
  }

  async registerToken(workerId, fcmToken, model, profile = {}) {
    await this.call("POST", "register-token", { json: { worker_id: workerId, fcm_token: fcmToken, model, ...profile } });
  }

  async workerStatus(workerId, available) {
    await this.call("POST", "worker-status", { json: { worker_id: workerId, available } });
  }

  async postMetrics(workerId, stats) {
    await this.call("POST", "metrics", { json: { worker_id: workerId, stats } });
  }
}

// -- a device's loop, as firegrid/client/device.py -------------------------------------

export const Outcome = Object.freeze({
  REPORTED: "reported",
  REJECTED: "rejected",
  COMPLETED: "completed", // rejected without a timeout: training is over
  LATE: "late", // the cycle closed (or was reset) before this device's download or report
});

/** One browser taking part in one process with its local data {x, y, xTest?, yTest?}. */
export class Device {
  constructor(baseUrl, model, data, { version = null, authToken = null, seed = 0, client = null } = {}) {
    this.client = client ?? new DeviceClient(baseUrl);
    this.model = model;
    this.version = version;
    this.data = data;
    this.authToken = authToken;
    this.seed = seed;
    this.workerId = null;
  }

  async authenticate() {
    this.workerId = await this.client.authenticate(this.model, this.version, this.authToken);
    return this.workerId;
  }

  /** Join the pool: the server invites this device by push at ``fcmToken``. */
  async registerToken(fcmToken, profile = {}) {
    await this.client.registerToken(this.workerId ?? (await this.authenticate()), fcmToken, this.model, profile);
  }

  async setAvailable(available) {
    await this.client.workerStatus(this.workerId ?? (await this.authenticate()), available);
  }

  /** An assignment, or the rejection as a result ({outcome, timeout?, reason}). */
  async request(extra = {}) {
    const workerId = this.workerId ?? (await this.authenticate());
    const reply = await this.client.cycleRequest(workerId, this.model, this.version, extra);
    if (reply.requestKey !== undefined) return reply;
    if (reply.timeout === undefined) return { outcome: Outcome.COMPLETED, reason: reply.reason };
    return { outcome: Outcome.REJECTED, timeout: Number(reply.timeout), reason: reply.reason };
  }

  /** Download, evaluate, train, report, post metrics; a 409 (the cycle moved on) is LATE. */
  async trainAndReport(assignment) {
    try {
      return await this.#trainAndReport(assignment);
    } catch (error) {
      if (error instanceof ServerError && error.status === 409) {
        return { outcome: Outcome.LATE, cycleId: assignment.cycleId, reason: error.code };
      }
      throw error;
    }
  }

  async #trainAndReport(assignment) {
    const started = performance.now();
    const spec = await this.client.getPlan(assignment);
    const checkpoint = await this.client.getModel(assignment);
    const test = this.data.yTest?.length ? { x: this.data.xTest, y: this.data.yTest } : null;
    const localAccuracy = test ? accuracy(spec, checkpoint, test) : null;
    const seed = this.seed * 100003 + assignment.cycleId;
    const trained = train(spec, checkpoint, this.data, assignment.clientConfig, { seed });
    await this.client.report(assignment, trained.diff, trained.numSamples);
    if (localAccuracy !== null) {
      const stats = [{
        cycle_id: assignment.cycleId,
        accuracy: localAccuracy,
        num_samples: test.y.length,
        train_time_s: Math.round(performance.now() - started) / 1000,
      }];
      await this.client.postMetrics(assignment.workerId, stats);
    }
    return {
      outcome: Outcome.REPORTED,
      cycleId: assignment.cycleId,
      accuracy: localAccuracy,
      numSamples: trained.numSamples,
      stepSeconds: trained.stepSeconds,
      diff: trained.diff,
    };
  }

  async runCycle(extra = {}) {
    const reply = await this.request(extra);
    return reply.outcome !== undefined ? reply : this.trainAndReport(reply);
  }

  /** Take part until training is over (or ``maxCycles`` reports), waiting as told. */
  async run(maxCycles = Infinity, sleep = (s) => new Promise((done) => setTimeout(done, s * 1000))) {
    const results = [];
    while (results.filter((r) => r.outcome === Outcome.REPORTED).length < maxCycles) {
      const result = await this.runCycle();
      results.push(result);
      if (result.outcome === Outcome.COMPLETED) break;
      if (result.outcome === Outcome.REJECTED && result.timeout) await sleep(result.timeout);
    }
    return results;
  }
}
