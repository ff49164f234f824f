/**
 * What an ml-model config node does, without Node-RED: load the model into a ModelRunner, resolve
 * its labels, reload it when the file changes (checking the new file before it replaces the
 * serving model) and report state. ml-model.ts only wires this to the node.
 */
import { EventEmitter } from 'events';
import * as fs from 'fs';
import { checkReplacementInput, checkReplacementOutputs } from '../lib/model-io';
import { ModelInfo, ModelRunner, RunResult, RunnerClosedError } from '../lib/model-runner';
import { errorMessage } from '../lib/red-types';
import { FeedTensor } from '../lib/tensor';
import type { SessionOptions } from '../lib/worker-protocol';
import { readLabelsFile } from './model-config';

export type ModelState = 'idle' | 'loading' | 'ready' | 'error';

export type LabelSource =
  | { from: 'metadata' }
  | { from: 'file'; file: string | undefined }
  | { from: 'list'; labels: string[] };

export interface LoadedModel extends ModelInfo {
  /** Labels in output order after applying the label source; undefined when there are none. */
  classLabels?: string[];
}

export interface ModelServiceOptions {
  modelPath: string;
  session: SessionOptions;
  runTimeoutMs: number;
  labels: LabelSource;
  watch: boolean;
  log: { info(message: string): void; warn(message: string): void; error(message: string): void };
  /** How often the file is polled, and how long it must stay unchanged before it is reloaded. */
  watchIntervalMs?: number;
  settleMs?: number;
  crashRestartDelayMs?: [number, number];
}

/**
 * The size of the class dimension of a [batch, classes] output, when the model states it. Detection
 * models (by metadata, or a [batch, a, b] output) are checked by ml-inference when it decodes them.
 */
function classCount(info: ModelInfo): number | undefined {
  if (info.task && info.task !== 'classify') return undefined;
  const shape = info.outputs[0]?.shape;
  if (shape && shape.length >= 3 && shape[shape.length - 2] !== 1) return undefined;
  const last = shape?.[shape.length - 1];
  return typeof last === 'number' ? last : undefined;
}

export class ModelService {
  /** 'state' (state, error?), 'reloaded' (model), 'reload-failed' (message). */
  readonly events = new EventEmitter();
  state: ModelState = 'idle';
  lastError?: string;
  private runner?: ModelRunner;
  private loading?: Promise<LoadedModel>;
  private loaded?: LoadedModel;
  private reloadTimer?: NodeJS.Timeout;
  private watching = false;

  constructor(readonly options: ModelServiceOptions) {
    this.events.setMaxListeners(0);
    this.onFileChange = this.onFileChange.bind(this);
  }

  get modelPath(): string {
    return this.options.modelPath;
  }

  /** The runner serving the model while the service is started (diagnostics and tests). */
  get currentRunner(): ModelRunner | undefined {
    return this.runner;
  }

  start(): void {
    if (this.runner) return;
    const runner = new ModelRunner(this.modelPath, {
      session: this.options.session,
      runTimeoutMs: this.options.runTimeoutMs,
      crashRestartDelayMs: this.options.crashRestartDelayMs,
    });
    this.runner = runner;
    runner.on('worker-crashed', (err: Error, delayMs: number) => {
      this.options.log.error(`${err.message}; restarting it in ${delayMs} ms`);
    });
    runner.on('worker-replaced', (reason: string) => this.options.log.warn(`restarting the inference worker: ${reason}`));
    runner.on('worker-restarted', () => this.options.log.info(`inference worker restarted with ${this.modelPath}`));
    this.startLoading(runner, false);
    if (this.options.watch) {
      fs.watchFile(this.modelPath, { interval: this.options.watchIntervalMs ?? 1000, persistent: false }, this.onFileChange);
      this.watching = true;
    }
  }

  async stop(): Promise<void> {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = undefined;
    if (this.watching) fs.unwatchFile(this.modelPath, this.onFileChange);
    this.watching = false;
    const closing = this.runner;
    this.runner = undefined;
    this.loading = undefined;
    this.loaded = undefined;
    this.setState('idle');
    if (closing) await closing.close();
  }

  /** Resolves with the loaded model, or rejects with why it cannot be used. */
  ready(): Promise<LoadedModel> {
    return this.loading ?? Promise.reject(new Error('model is not in use by any node'));
  }

  async run(feeds: Record<string, FeedTensor>): Promise<RunResult> {
    const runner = this.runner;
    if (!runner) throw new Error('model is not in use');
    await this.ready();
    return runner.run(feeds);
  }

  private setState(state: ModelState, error?: string): void {
    this.state = state;
    this.lastError = error;
    this.events.emit('state', state, error);
  }

  private async resolveLabels(info: ModelInfo): Promise<string[] | undefined> {
    const source = this.options.labels;
    let labels: string[] | undefined;
    if (source.from === 'file') {
      if (!source.file) throw new Error('labels come from a file but no labels file is set');
      labels = await readLabelsFile(source.file);
    } else if (source.from === 'list') labels = source.labels;
    else labels = info.labels;
    if (labels && labels.length === 0) labels = undefined;
    const classes = classCount(info);
    if (labels && classes !== undefined && labels.length !== classes) {
      throw new Error(`the model outputs ${classes} classes but ${labels.length} labels were given (${source.from}); they must match one to one`);
    }
    return labels;
  }

  private async load(runner: ModelRunner, isReload: boolean): Promise<LoadedModel> {
    let classLabels: string[] | undefined;
    const info = await runner.load(async (candidate, serving) => {
      classLabels = await this.resolveLabels(candidate);
      if (serving) {
        checkReplacementInput(candidate.inputs[0], serving.inputs[0]);
        checkReplacementOutputs(candidate.outputs, serving.outputs);
      }
    });
    const model: LoadedModel = { ...info, classLabels };
    if (this.runner === runner) this.loaded = model;
    for (const warning of info.warnings) this.options.log.warn(warning);
    if (isReload) this.options.log.info(`reloaded ${this.modelPath}`);
    return model;
  }

  private startLoading(runner: ModelRunner, isReload: boolean): Promise<LoadedModel> {
    const previous = this.loaded;
    if (!isReload || !previous) this.setState('loading');
    const attempt = this.load(runner, isReload).then(
      (model) => {
        if (this.runner === runner) {
          this.setState('ready');
          if (isReload) this.events.emit('reloaded', model);
        }
        return model;
      },
      (err) => {
        const message = errorMessage(err);
        if (err instanceof RunnerClosedError || this.runner !== runner) throw new Error(message); // stopped meanwhile: nothing to report
        if (isReload && previous) {
          // Keep serving the previous session; say once which file was refused and why.
          const refusal = `kept the previous model: the new ${this.modelPath} was refused: ${message}`;
          this.options.log.warn(refusal);
          this.events.emit('reload-failed', refusal);
          return previous;
        }
        this.setState('error', message);
        throw new Error(message);
      },
    );
    attempt.catch(() => undefined); // callers of ready() see the rejection; no unhandled-rejection noise
    this.loading = attempt;
    return attempt;
  }

  private onFileChange(curr: fs.Stats, prev: fs.Stats): void {
    if (curr.mtimeMs === prev.mtimeMs && curr.size === prev.size) return;
    if (curr.size === 0 && curr.mtimeMs === 0) return; // deleted: keep the session we have
    // A model being copied into place changes several times: loaded once it stayed the same for
    // longer than one poll of the watch (a copy still running changes it at every poll).
    clearTimeout(this.reloadTimer);
    const settleMs = this.options.settleMs ?? Math.max(750, 2.5 * (this.options.watchIntervalMs ?? 1000));
    this.reloadTimer = setTimeout(() => {
      this.reloadTimer = undefined;
      fs.stat(this.modelPath, (err, now) => {
        if (!this.runner || this.reloadTimer) return;
        // Still changing since the watch last saw it: wait again.
        if (!err && (now.mtimeMs !== curr.mtimeMs || now.size !== curr.size)) return this.onFileChange(now, curr);
        this.startLoading(this.runner, true);
      });
    }, settleMs);
  }
}
