/** ml-inference: runs a tensor through the shared model (worker process) with a bounded frame policy. */
import * as path from 'path';
import { FrameQueue, QueuePolicy, RateMeter } from '../lib/frame-queue';
import { checkInputFits, classifyBatch, plainOutputs } from '../lib/model-io';
import { DoneFunction, errorMessage, Node, NodeAPI, NodeDef, NodeMessage, numberSetting, SendFunction } from '../lib/red-types';
import { checkFinite, toTensorValue } from '../lib/tensor';
import type { MlModelNode } from '../ml-model/ml-model';

interface Job {
  msg: NodeMessage;
  send: SendFunction;
  done: DoneFunction;
  arrived: number;
}

module.exports = function (RED: NodeAPI) {
  function MlInference(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const model = RED.nodes.getNode(String(config.model || '')) as MlModelNode | null;
    const mode = config.output === 'raw' ? 'raw' : 'classification';
    const policy: QueuePolicy = config.policy === 'oldest' ? 'oldest' : 'latest';
    let topK = 3;
    let capacity = 1;
    /** Refused, not patched with defaults: a node that runs with other settings than shown misleads. */
    let settingError: string | undefined;
    try {
      topK = numberSetting(config.topK, 3, { min: 1, max: 1000, name: 'topK' });
      capacity = numberSetting(config.queueSize, 1, { min: 1, max: 1000, name: 'queueSize' });
    } catch (err) {
      settingError = `inference not started: ${errorMessage(err)}`;
    }
    const queue = new FrameQueue<Job>(policy, capacity);
    const meter = new RateMeter();
    let busy = false;
    let dropped = 0;
    let lastMs = 0;
    let lastStatusAt = 0;
    let closing = false;

    function showStatus(force = false) {
      const now = Date.now();
      if (!force && now - lastStatusAt < 500) return; // status updates are not free at video rates
      lastStatusAt = now;
      const parts = [`${lastMs.toFixed(1)} ms`, `${meter.rate(now).toFixed(1)} fps`];
      if (dropped) parts.push(`dropped ${dropped}`);
      node.status({ fill: 'green', shape: 'dot', text: parts.join(' · ') });
    }

    function onModelState(state: string, error?: string) {
      if (state === 'loading') node.status({ fill: 'yellow', shape: 'ring', text: 'loading model' });
      else if (state === 'ready') node.status({ fill: 'green', shape: 'dot', text: 'ready' });
      else if (state === 'error') node.status({ fill: 'red', shape: 'ring', text: `model error: ${(error ?? '').slice(0, 50)}` });
    }
    const onReloadFailed = () => node.status({ fill: 'yellow', shape: 'dot', text: 'new model rejected; previous one in use' });

    if (settingError) {
      node.status({ fill: 'red', shape: 'ring', text: settingError.replace('inference not started: ', '').slice(0, 70) });
      node.error(settingError);
    } else if (!model) {
      node.status({ fill: 'red', shape: 'ring', text: 'no model selected' });
    } else {
      model.events.on('state', onModelState);
      model.events.on('reload-failed', onReloadFailed);
      model.register(node);
      onModelState(model.state, model.lastError);
    }

    async function infer(job: Job) {
      const started = Date.now();
      if (!model) throw new Error('no ml-model config node is selected');
      const loaded = await model.ready();
      const tensor = toTensorValue(job.msg.payload);
      checkFinite(tensor);
      const input = loaded.inputs[0];
      checkInputFits(tensor, input);
      const result = await model.run({ [input.name]: tensor });
      const outputName = loaded.outputs[0].name;
      const output = result.outputs[outputName];
      if (mode === 'raw') {
        job.msg.payload = { outputs: plainOutputs(result.outputs) };
      } else {
        const rows = classifyBatch(output, loaded.classLabels, topK, outputName);
        job.msg.payload = tensor.dims[0] === 1 ? rows[0] : rows;
      }
      lastMs = result.ms;
      job.msg.inference = {
        model: path.basename(loaded.path),
        ms: Math.round(result.ms * 100) / 100,
        queueMs: started - job.arrived,
        totalMs: Date.now() - job.arrived,
      };
    }

    async function pump() {
      if (busy) return;
      busy = true;
      try {
        for (let job = queue.take(); job && !closing; job = queue.take()) {
          try {
            await infer(job);
            meter.tick();
            showStatus();
            job.send(job.msg);
            job.done();
          } catch (err) {
            node.status({ fill: 'red', shape: 'ring', text: errorMessage(err).slice(0, 60) });
            job.done(err as Error);
          }
        }
      } finally {
        busy = false;
      }
    }

    node.on('input', (msg, send, done) => {
      if (settingError) return done(new Error(settingError));
      const droppedJob = queue.offer({ msg, send, done, arrived: Date.now() });
      if (droppedJob) {
        dropped++;
        showStatus(true);
        droppedJob.done(); // a deliberate drop under load is not an error
      }
      pump().catch((err) => node.error(`inference queue stopped: ${errorMessage(err)}`));
    });

    node.on('close', (removed: boolean, done: () => void) => {
      closing = true;
      for (const job of queue.drain()) job.done();
      if (!model || settingError) return done(); // never registered
      model.events.off('state', onModelState);
      model.events.off('reload-failed', onReloadFailed);
      model.deregister(node, done, removed);
    });
  }

  RED.nodes.registerType('ml-inference', MlInference);
};
