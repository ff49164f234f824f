/**
 * ml-model config node: one ONNX session (in a worker thread) shared by every node that uses it.
 * Loaded when the first user registers, released when the last one leaves; reloaded when the file
 * changes on disk, keeping the old session if the new file is broken.
 */
import { EventEmitter } from 'events';
import * as fs from 'fs';
import { ModelInfo, ModelRunner, RunResult } from '../lib/model-runner';
import { shareAmongUsers, SharedResourceNode } from '../lib/shared-resource';
import { errorMessage, Node, NodeAPI, NodeDef, numberSetting, textSetting } from '../lib/red-types';
import { TensorValue } from '../lib/tensor';
import type { SessionOptions } from '../lib/worker-protocol';
import { parseLabelList, readLabelsFile, resolveModelPath } from './model-config';

export type ModelState = 'idle' | 'loading' | 'ready' | 'error';

export interface MlModelNode extends SharedResourceNode {
  readonly events: EventEmitter;
  state: ModelState;
  lastError?: string;
  modelPath: string;
  /** Resolves with the loaded model, or rejects with why it cannot be used. */
  ready(): Promise<LoadedModel>;
  run(feeds: Record<string, TensorValue>): Promise<RunResult>;
}

export interface LoadedModel extends ModelInfo {
  /** Labels in output order after applying the node's label source; undefined when there are none. */
  classLabels?: string[];
}

/** The size of the class dimension of a [batch, classes] output, when the model states it. */
function classCount(info: ModelInfo): number | undefined {
  const shape = info.outputs[0]?.shape;
  const last = shape?.[shape.length - 1];
  return typeof last === 'number' ? last : undefined;
}

module.exports = function (RED: NodeAPI) {
  function MlModel(this: MlModelNode, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const events = new EventEmitter();
    events.setMaxListeners(0);
    const labelSource = String(config.labelSource || 'metadata');
    const watch = config.watch !== false;
    let runner: ModelRunner | undefined;
    let loading: Promise<LoadedModel> | undefined;
    let loaded: LoadedModel | undefined;
    let reloadTimer: NodeJS.Timeout | undefined;
    let watching = false;

    Object.assign(node, { events, state: 'idle' as ModelState });
    node.modelPath = resolveModelPath(textSetting(config.path), RED.settings.userDir);

    let sessionOptions: SessionOptions;
    try {
      sessionOptions = {
        executionProviders: [String(config.provider || 'cpu'), 'cpu'].filter((p, i, a) => a.indexOf(p) === i),
        intraOpNumThreads: numberSetting(config.intraOpThreads, 0, { min: 0, max: 256 }),
        interOpNumThreads: numberSetting(config.interOpThreads, 0, { min: 0, max: 256 }),
      };
    } catch (err) {
      sessionOptions = { executionProviders: ['cpu'], intraOpNumThreads: 0, interOpNumThreads: 0 };
      node.warn(`thread settings ignored: ${errorMessage(err)}`);
    }

    function setState(state: ModelState, error?: string) {
      node.state = state;
      node.lastError = error;
      events.emit('state', state, error);
    }

    async function resolveLabels(info: ModelInfo): Promise<string[] | undefined> {
      let labels: string[] | undefined;
      if (labelSource === 'file') {
        const file = textSetting(config.labelsFile);
        if (!file) throw new Error('labels come from a file but no labels file is set');
        labels = await readLabelsFile(resolveModelPath(file, RED.settings.userDir));
      }
      else if (labelSource === 'list') labels = parseLabelList(String(config.labels || ''));
      else labels = info.labels;
      if (labels && labels.length === 0) labels = undefined;
      const classes = classCount(info);
      if (labels && classes !== undefined && labels.length !== classes) {
        throw new Error(`the model outputs ${classes} classes but ${labels.length} labels were given (${labelSource}); they must match one to one`);
      }
      return labels;
    }

    async function load(isReload: boolean): Promise<LoadedModel> {
      if (!runner) throw new Error('model is not in use');
      const info = await runner.load();
      const classLabels = await resolveLabels(info);
      loaded = { ...info, classLabels };
      for (const warning of info.warnings) node.warn(warning);
      if (isReload) node.log(`reloaded ${node.modelPath}`);
      return loaded;
    }

    function startLoading(isReload: boolean): Promise<LoadedModel> {
      if (!isReload || !loaded) setState('loading');
      const attempt = load(isReload).then(
        (model) => {
          setState('ready');
          if (isReload) events.emit('reloaded', model);
          return model;
        },
        (err) => {
          const message = errorMessage(err);
          if (isReload && loaded) {
            // Keep serving the previous session; tell the user the new file was not taken.
            node.warn(`kept the previous model: ${message}`);
            events.emit('reload-failed', message);
            return loaded;
          }
          setState('error', message);
          throw new Error(message);
        },
      );
      attempt.catch(() => undefined); // callers of ready() see the rejection; avoid unhandled noise
      loading = attempt;
      return attempt;
    }

    function onFileChange(curr: fs.Stats, prev: fs.Stats) {
      if (curr.mtimeMs === prev.mtimeMs && curr.size === prev.size) return;
      if (curr.size === 0 && curr.mtimeMs === 0) return; // deleted: keep the session we have
      // A model being copied into place changes several times; wait until it settles.
      clearTimeout(reloadTimer);
      reloadTimer = setTimeout(() => {
        if (runner) startLoading(true);
      }, 750);
    }

    function start() {
      if (runner) return;
      runner = new ModelRunner(node.modelPath, sessionOptions);
      runner.on('crashed', (err: Error) => {
        node.error(`${err.message}; reloading the model`);
        loaded = undefined;
        if (runner) startLoading(false);
      });
      startLoading(false);
      if (watch) {
        fs.watchFile(node.modelPath, { interval: 1000, persistent: false }, onFileChange);
        watching = true;
      }
    }

    async function stop() {
      clearTimeout(reloadTimer);
      if (watching) fs.unwatchFile(node.modelPath, onFileChange);
      watching = false;
      const closing = runner;
      runner = undefined;
      loading = undefined;
      loaded = undefined;
      setState('idle');
      if (closing) await closing.close();
    }

    shareAmongUsers(node, start, stop);

    node.ready = () => loading ?? Promise.reject(new Error('model is not in use by any node'));

    node.run = async (feeds) => {
      if (!runner) throw new Error('model is not in use');
      await node.ready();
      return runner.run(feeds);
    };
  }

  RED.nodes.registerType('ml-model', MlModel as unknown as (this: Node, def: NodeDef) => void);
};
