/**
 * ml-inference: runs tensors through the shared model (worker process). Frames wait in one lane per
 * camera, served round-robin; frames waiting together run as one batch when the model allows it.
 */
import { failMessage, showError } from '../lib/node-status';
import * as path from 'path';
import { batchOfRows, groupForBatches, hasDynamicBatch, outputsOfRow } from '../lib/batching';
import { FairQueue, QueuePolicy, RateMeter } from '../lib/frame-queue';
import { cameraOf, InferenceInfo } from '../lib/messages';
import { ModelRoom, modelRoomGate } from '../lib/limiter';
import { applyNames, cropRuleOf, cropTensors } from '../lib/crop-naming';
import { CoordinateUnits, DEFAULT_DETECTION, detect, DetectionResult, DetectionSettings, planDecoding, resolveClassFilter, toAnnotations } from '../lib/detection';
import { checkInputFits, classifyBatch, plainOutputs } from '../lib/model-io';
import type { BoxFormat, DetectionLayout } from '../lib/onnx-metadata';
import type { ResizeGeometry } from '../lib/preprocess-spec';
import { choiceSetting, DoneFunction, errorMessage, Node, NodeAPI, NodeDef, NodeMessage, numberSetting, SendFunction, textSetting } from '../lib/red-types';
import { checkFinite, TensorValue, toTensorValue } from '../lib/tensor';
import type { ValueInfo } from '../lib/worker-protocol';
import type { LoadedModel, MlModelNode } from '../ml-model/ml-model';

interface Job {
  msg: NodeMessage;
  send: SendFunction;
  done: DoneFunction;
  arrived: number;
  camera: string;
}

interface ReadyJob extends Job {
  tensor: TensorValue;
}

type OutputMode = 'classification' | 'detection' | 'raw' | 'auto';

/** Reads the detection settings; throws naming the setting that is wrong. */
function detectionSettings(config: NodeDef): DetectionSettings {
  const classes = textSetting(config.classes).split(',').map((c) => c.trim()).filter(Boolean);
  const boxes = choiceSetting(config.boxFormat, ['', 'xyxy', 'yxyx', 'cxcywh'] as const, '', 'boxFormat');
  return {
    layout: choiceSetting(config.layout, ['auto', 'yolov8', 'yolov5', 'end2end', 'ssd'] as const, 'auto', 'layout') as DetectionLayout | 'auto',
    scoreThreshold: numberSetting(config.scoreThreshold, DEFAULT_DETECTION.scoreThreshold, { min: 0, max: 1, name: 'scoreThreshold' }),
    iouThreshold: numberSetting(config.iouThreshold, DEFAULT_DETECTION.iouThreshold, { min: 0, max: 1, name: 'iouThreshold' }),
    acrossClasses: config.acrossClasses === true,
    maxDetections: Math.round(numberSetting(config.maxDetections, DEFAULT_DETECTION.maxDetections, { min: 1, max: 10000, name: 'maxDetections' })),
    classes,
    boxes: boxes === '' ? undefined : (boxes as BoxFormat),
    coordinates: choiceSetting(config.coordinates, ['auto', 'normalized', 'pixels'] as const, 'auto', 'coordinates') as CoordinateUnits,
  };
}

/** msg.preprocess.geometry when it is what ml-preprocess writes (it may have crossed JSON). */
function geometryOf(msg: NodeMessage): ResizeGeometry | undefined {
  const g = (msg as { preprocess?: { geometry?: unknown } }).preprocess?.geometry as ResizeGeometry | undefined;
  const rect = (r: unknown) => !!r && typeof r === 'object' && ['x', 'y', 'width', 'height'].every((k) => Number.isFinite((r as Record<string, number>)[k]));
  return g && rect(g.source) && rect(g.target) && g.target.width > 0 && g.target.height > 0 ? g : undefined;
}

/** The model input's width and height: from msg.preprocess, else from an image tensor's shape. */
function inputSizeOf(msg: NodeMessage, dims: number[]): { width: number; height: number } {
  const pre = (msg as { preprocess?: { width?: unknown; height?: unknown } }).preprocess;
  if (pre && Number(pre.width) > 0 && Number(pre.height) > 0) return { width: Number(pre.width), height: Number(pre.height) };
  if (dims.length === 4) return dims[1] <= 4 ? { width: dims[3], height: dims[2] } : { width: dims[2], height: dims[1] };
  return { width: 1, height: 1 };
}


module.exports = function (RED: NodeAPI) {
  function MlInference(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const model = RED.nodes.getNode(String(config.model || '')) as MlModelNode | null;
    // Flows from before detection have no setting, or 'classification': they keep classifying.
    const mode: OutputMode = (['raw', 'detection', 'auto'] as const).find((m) => m === config.output) ?? 'classification';
    /** Detection: a classifier of crops that names each box (optional; the dialog hides it in the other modes). */
    const namer = config.namer && (mode === 'detection' || mode === 'auto') ? RED.nodes.getNode(String(config.namer)) as MlModelNode | null : undefined;
    let detection: DetectionSettings = DEFAULT_DETECTION;
    const policy: QueuePolicy = config.policy === 'oldest' ? 'oldest' : 'latest';
    let topK = 3;
    let perCamera = 1;
    let maxBatch = 8;
    /** Refused, not patched with defaults: a node that runs with other settings than shown misleads. */
    let settingError: string | undefined;
    try {
      topK = numberSetting(config.topK, 3, { min: 1, max: 1000, name: 'topK' });
      perCamera = numberSetting(config.queueSize, 1, { min: 1, max: 1000, name: 'queueSize' });
      maxBatch = numberSetting(config.maxBatch, 8, { min: 1, max: 256, name: 'maxBatch' });
      if (mode === 'detection' || mode === 'auto') detection = detectionSettings(config);
    } catch (err) {
      settingError = `inference not started: ${errorMessage(err)}`;
    }
    const queue = new FairQueue<Job>(policy, perCamera);
    /** ml-preprocess holds frames undecoded while this node has no room for them (see ModelRoom). */
    const room = new ModelRoom(modelRoomGate, 2 * maxBatch, perCamera);
    const updateRoom = (camera: string) => {
      if (!closing) room.update(camera, (c) => queue.laneLength(c), queue.length);
    };
    const meter = new RateMeter();
    let busy = false;
    let lastMs = 0;
    let lastBatch = 1;
    /** Objects found in the last frame, when detecting. */
    let lastObjects: number | undefined;
    let lastStatusAt = 0;
    let closing = false;

    function showStatus(force = false) {
      const now = Date.now();
      if (!force && now - lastStatusAt < 500) return; // status updates are not free at video rates
      lastStatusAt = now;
      const parts = [`${lastMs.toFixed(1)} ms`, `${meter.rate(now).toFixed(1)} fps`];
      if (lastObjects !== undefined) parts.unshift(`${lastObjects} object${lastObjects === 1 ? '' : 's'}`);
      if (lastBatch > 1) parts.push(`batch ${lastBatch}`);
      const dropped = queue.totalDropped;
      if (dropped) parts.push(`dropped ${dropped}${queue.lanesWithDrops > 1 ? ` (${queue.lanesWithDrops} cameras)` : ''}`);
      node.status({ fill: 'green', shape: 'dot', text: parts.join(' · ') });
    }

    function onModelState(state: string, error?: string) {
      if (state === 'loading') node.status({ fill: 'yellow', shape: 'ring', text: 'loading model' });
      else if (state === 'ready') node.status({ fill: 'green', shape: 'dot', text: 'ready' });
      else if (state === 'error') showError(node, `model error: ${error ?? ''}`);
    }
    const onReloadFailed = () => node.status({ fill: 'yellow', shape: 'dot', text: 'new model rejected; previous one in use' });

    if (settingError) {
      showError(node, settingError.replace('inference not started: ', ''));
      node.error(settingError);
    } else if (!model) {
      showError(node, 'no model selected');
    } else if (namer === null) {
      settingError = 'Name boxes with: the selected ml-model node does not exist (deleted or not deployed)';
      showError(node, settingError);
      node.error(settingError);
    } else {
      model.events.on('state', onModelState);
      model.events.on('reload-failed', onReloadFailed);
      model.register(node);
      namer?.register(node);
      onModelState(model.state, model.lastError);
    }

    /** Names the boxes of one frame with the classifier of crops: one batch (or one run a box without a batch dimension). */
    async function nameBoxes(job: ReadyJob, rows: DetectionResult[]) {
      const boxes = rows.flatMap((r) => r.detections);
      if (!namer || !boxes.length) return;
      const image = (job.msg as { image?: unknown }).image;
      if (!Buffer.isBuffer(image)) {
        throw new Error('Name boxes with: the boxes are cut from msg.image (the frame as ml-preprocess leaves it), but msg.image is not a Buffer');
      }
      const pre = (job.msg as { preprocess?: { sourceWidth?: unknown; sourceHeight?: unknown } }).preprocess;
      const frame = { width: Number(pre?.sourceWidth), height: Number(pre?.sourceHeight) };
      if (!(frame.width > 0 && frame.height > 0)) throw new Error('Name boxes with: msg.preprocess.sourceWidth and sourceHeight (the frame size, set by ml-preprocess) are missing');
      const loaded = await namer.ready();
      if (!loaded.preprocess) throw new Error(`Name boxes with: ${path.basename(loaded.path)} has no "preprocess" metadata, so its crops cannot be prepared`);
      const tensors = await cropTensors(image, boxes, frame, loaded.preprocess, cropRuleOf(loaded.props));
      const present = tensors.filter((t): t is TensorValue => t !== null);
      if (!present.length) return;
      const input = loaded.inputs[0];
      const outputName = loaded.outputs[0].name;
      const runs = hasDynamicBatch(input) ? [present] : present.map((t) => [t]);
      const names: Array<{ label: string; score: number }> = [];
      for (const run of runs) {
        const result = await namer.run({ [input.name]: batchOfRows(run) });
        names.push(...classifyBatch(result.outputs[outputName], loaded.classLabels, 1, outputName));
      }
      let next = 0;
      applyNames(boxes, tensors.map((t) => (t ? names[next++] : null)), loaded.classLabels);
    }

    /** Checks each tensor on its own, so one bad message fails alone. */
    function prepare(job: Job, input: ValueInfo): ReadyJob | undefined {
      try {
        const tensor = toTensorValue(job.msg.payload);
        checkFinite(tensor);
        checkInputFits(tensor, input);
        return { ...job, tensor };
      } catch (err) {
        fail(job, err);
        return undefined;
      }
    }

    function fail(job: Job, err: unknown) {
      failMessage(node, job.done, err);
    }

    /**
     * Classification or detection: the setting, else (auto) the model's task metadata, else its
     * output: a [batch, classes] output is a classifier, anything else a detector.
     */
    function decideMode(loaded: LoadedModel, outputs: Record<string, TensorValue>): 'classification' | 'detection' {
      if (mode === 'classification' || mode === 'detection') return mode;
      if (loaded.task === 'classify') return 'classification';
      if (loaded.task === 'detect') return 'detection';
      if (loaded.task) {
        throw new Error(`the model's metadata says its task is "${loaded.task}"; ml-inference decodes "classify" and "detect" models (choose the raw output for others)`);
      }
      const outputList = Object.values(outputs);
      const dims = outputList[0].dims;
      const classifier = outputList.length === 1 && (dims.length <= 2 || (dims.length === 3 && dims[1] === 1));
      return classifier ? 'classification' : 'detection';
    }

    /** One model run for the group; each frame gets its own row of the outputs. */
    async function runGroup(group: ReadyJob[], loaded: LoadedModel) {
      const started = Date.now();
      const outputName = loaded.outputs[0].name;
      const result = await model!.run({ [loaded.inputs[0].name]: batchOfRows(group.map((j) => j.tensor)) });
      lastMs = result.ms;
      lastBatch = group.length;
      // Results are worked out for every frame before any is sent, so a batch that fails (a
      // non-finite score) can be retried frame by frame without sending anything twice.
      const payloads = group.map((job, row) => {
        const outputs = outputsOfRow(result.outputs, row, group.length);
        if (mode === 'raw') return { payload: { outputs: plainOutputs(outputs) } };
        if (decideMode(loaded, outputs) === 'classification') {
          const rows = classifyBatch(outputs[outputName], loaded.classLabels, topK, outputName);
          return { payload: job.tensor.dims[0] === 1 ? rows[0] : rows };
        }
        const shapes = Object.entries(outputs).map(([name, t]) => ({ name, dims: t.dims }));
        const plan = planDecoding(shapes, detection.layout, loaded.detection, loaded.classLabels?.length);
        const allowed = resolveClassFilter(detection.classes, loaded.classLabels);
        const rows = detect({
          outputs, plan, inputSize: inputSizeOf(job.msg, job.tensor.dims), geometry: geometryOf(job.msg), labels: loaded.classLabels, meta: loaded.detection,
        }, detection, allowed);
        lastObjects = rows[rows.length - 1].count;
        return { payload: job.tensor.dims[0] === 1 ? rows[0] : rows, detections: rows };
      });
      // The second stage fails a frame on its own: the others of the batch still go.
      const named = await Promise.all(group.map((job, i) => {
        const rows = payloads[i].detections;
        return rows ? nameBoxes(job, rows).then(() => true, (err) => { fail(job, err); return false; }) : true;
      }));
      group.forEach((job, i) => {
        if (!named[i]) return;
        const { payload, detections } = payloads[i];
        job.msg.payload = payload;
        if (detections) {
          (job.msg as { annotations?: unknown }).annotations = job.tensor.dims[0] === 1
            ? toAnnotations(detections[0].detections) : detections.map((r) => toAnnotations(r.detections));
        }
        job.msg.inference = {
          model: path.basename(loaded.path),
          ms: Math.round(result.ms * 100) / 100,
          batch: group.length,
          queueMs: started - job.arrived,
          totalMs: Date.now() - job.arrived,
          dropped: queue.dropped(job.camera),
        } satisfies InferenceInfo;
        meter.tick();
        job.send(job.msg);
        job.done();
      });
      showStatus();
    }

    async function serve(jobs: Job[]) {
      let loaded: LoadedModel;
      try {
        if (!model) throw new Error('no ml-model config node is selected');
        loaded = await model.ready();
      } catch (err) {
        jobs.forEach((job) => fail(job, err));
        return;
      }
      const input = loaded.inputs[0];
      const ready = jobs.map((job) => prepare(job, input)).filter((job): job is ReadyJob => job !== undefined);
      const groups = hasDynamicBatch(input) ? groupForBatches(ready, (j) => j.tensor, maxBatch) : ready.map((j) => [j]);
      for (const group of groups) {
        try {
          await runGroup(group, loaded);
        } catch (err) {
          if (group.length === 1) {
            fail(group[0], err);
            continue;
          }
          // Find the frame(s) at fault: the others still get their results.
          for (const job of group) {
            await runGroup([job], loaded).catch((e) => fail(job, e));
          }
        }
      }
    }

    async function pump() {
      if (busy) return;
      busy = true;
      try {
        while (!closing && queue.length) {
          const jobs = queue.take(maxBatch);
          jobs.forEach((job) => updateRoom(job.camera));
          await serve(jobs);
        }
      } finally {
        busy = false;
      }
    }

    node.on('input', (msg, send, done) => {
      if (settingError) return done(new Error(settingError));
      const camera = cameraOf(msg); // '' for frames without a camera: one lane, and no decode waits for it
      const droppedJob = queue.offer(camera, { msg, send, done, arrived: Date.now(), camera });
      if (droppedJob) {
        showStatus(true);
        droppedJob.done(); // a deliberate drop under load is not an error
      }
      updateRoom(camera);
      pump().catch((err) => node.error(`inference queue stopped: ${errorMessage(err)}`));
    });

    node.on('close', (removed: boolean, done: () => void) => {
      closing = true;
      for (const job of queue.drain()) job.done();
      room.releaseAll();
      if (!model || settingError) return done(); // never registered
      model.events.off('state', onModelState);
      model.events.off('reload-failed', onReloadFailed);
      if (!namer) return model.deregister(node, done, removed);
      // Both models let go of this node before the close is done.
      let left = 2;
      const one = () => { if (--left === 0) done(); };
      model.deregister(node, one, removed);
      namer.deregister(node, one, removed);
    });
  }

  RED.nodes.registerType('ml-inference', MlInference);
};
