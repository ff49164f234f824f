/**
 * ml-model config node: one ONNX model (in an inference worker process) shared by every node that
 * uses it. Loaded when the first user registers, released when the last one leaves. The loading,
 * reloading and checking live in model-service.ts; this file reads the settings and wires it up.
 */
import type { EventEmitter } from 'events';
import { RunResult } from '../lib/model-runner';
import { shareAmongUsers, SharedResourceNode } from '../lib/shared-resource';
import { errorMessage, Node, NodeAPI, NodeDef, numberSetting, textSetting } from '../lib/red-types';
import { FeedTensor } from '../lib/tensor';
import type { SessionOptions } from '../lib/worker-protocol';
import { parseLabelList, resolveModelPath } from './model-config';
import { LabelSource, LoadedModel, ModelService, ModelState } from './model-service';

export type { LoadedModel, ModelState } from './model-service';

export interface MlModelNode extends SharedResourceNode {
  readonly events: EventEmitter;
  readonly state: ModelState;
  readonly lastError?: string;
  modelPath: string;
  service: ModelService;
  /** Resolves with the loaded model, or rejects with why it cannot be used. */
  ready(): Promise<LoadedModel>;
  run(feeds: Record<string, FeedTensor>): Promise<RunResult>;
}

const DEFAULT_RUN_TIMEOUT_S = 10;

module.exports = function (RED: NodeAPI) {
  function MlModel(this: MlModelNode, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const modelPath = resolveModelPath(textSetting(config.path), RED.settings.userDir);

    let session: SessionOptions;
    try {
      session = {
        executionProviders: [String(config.provider || 'cpu'), 'cpu'].filter((p, i, a) => a.indexOf(p) === i),
        intraOpNumThreads: numberSetting(config.intraOpThreads, 0, { min: 0, max: 256, name: 'intraOpThreads' }),
        interOpNumThreads: numberSetting(config.interOpThreads, 0, { min: 0, max: 256, name: 'interOpThreads' }),
        allowSpinning: config.spinThreads === true || config.spinThreads === 'true',
      };
    } catch (err) {
      session = { executionProviders: ['cpu'], intraOpNumThreads: 0, interOpNumThreads: 0 };
      node.warn(`thread settings ignored: ${errorMessage(err)}`);
    }
    let runTimeoutS = DEFAULT_RUN_TIMEOUT_S;
    try {
      runTimeoutS = numberSetting(config.runTimeout, DEFAULT_RUN_TIMEOUT_S, { min: 0.001, max: 3600, name: 'runTimeout' });
    } catch (err) {
      node.warn(`${errorMessage(err)} (seconds); using ${DEFAULT_RUN_TIMEOUT_S} s`);
    }

    const labelSource = String(config.labelSource || 'metadata');
    const labels: LabelSource = labelSource === 'file'
      ? { from: 'file', file: textSetting(config.labelsFile) ? resolveModelPath(textSetting(config.labelsFile), RED.settings.userDir) : undefined }
      : labelSource === 'list' ? { from: 'list', labels: parseLabelList(String(config.labels || '')) } : { from: 'metadata' };

    const service = new ModelService({
      modelPath,
      session,
      runTimeoutMs: Math.round(runTimeoutS * 1000) || 1,
      labels,
      watch: config.watch !== false,
      log: { info: (m) => node.log(m), warn: (m) => node.warn(m), error: (m) => node.error(m) },
    });

    Object.defineProperties(node, {
      events: { get: () => service.events },
      state: { get: () => service.state },
      lastError: { get: () => service.lastError },
    });
    node.modelPath = modelPath;
    node.service = service;
    node.ready = () => service.ready();
    node.run = (feeds) => service.run(feeds);

    shareAmongUsers(node, () => service.start(), () => service.stop());
  }

  RED.nodes.registerType('ml-model', MlModel as unknown as (this: Node, def: NodeDef) => void);
};
