/**
 * ml-camera: emits JPEG frames with their metadata on an interval or when a message arrives, from
 * one source or from a list of cameras (each its own CameraRunner, with its own seq and events).
 */
import { showError } from '../lib/node-status';
import { describeReceived, errorMessage, Node, NodeAPI, NodeDef, NodeMessage, NodeStatus, SendFunction, textSetting } from '../lib/red-types';
import { CameraIdRegistry, parseCameraList } from './camera-list';
import { CameraHost, CameraRunner, CameraSettings, summariseCameras } from './camera-runner';
import { CameraTiming, readCameraTiming } from './camera-settings';
import { redactUrl } from './sources';

/** A node with many cameras shows their summary at most this often (never once per frame). */
const SUMMARY_EVERY_MS = 500;

/** Camera ids in use by the ml-camera nodes of this runtime. */
const cameraIds = new CameraIdRegistry();

module.exports = function (RED: NodeAPI) {
  function MlCamera(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const sourceSetting = textSetting(config.source);

    let timing: CameraTiming;
    let list: { id: string; source: string }[];
    try {
      timing = readCameraTiming(config);
      list = parseCameraList(textSetting(config.cameras));
    } catch (err) {
      // Refused, not patched with defaults: a node that runs with other settings than shown misleads.
      const problem = errorMessage(err);
      showError(node, problem);
      node.error(`camera not started: ${problem}`);
      node.on('input', (_msg, _send, done) => done(new Error(`camera not started: ${problem}`)));
      return;
    }
    const settings: CameraSettings = {
      sourceType: String(config.sourceType || 'auto'),
      timing,
      config,
      username: node.credentials?.user,
      password: node.credentials?.password,
    };
    const many = list.length > 0;
    let closed = false;
    let summaryTimer: NodeJS.Timeout | undefined;
    let summaryAt = 0;

    function showSummary() {
      summaryTimer = undefined;
      if (closed) return;
      summaryAt = Date.now();
      node.status(summariseCameras(runners));
    }

    /** At most one summary per SUMMARY_EVERY_MS, the last change always shown. */
    function summarySoon() {
      if (summaryTimer || closed) return;
      summaryTimer = setTimeout(showSummary, Math.max(0, summaryAt + SUMMARY_EVERY_MS - Date.now()));
    }

    function host(id: string): CameraHost {
      // With a list, errors name their camera; the node's status is the summary of all.
      const named = (m: string) => (many ? `camera ${id}: ${m}` : m);
      return {
        frame: (msg) => node.send([msg, null]),
        event: (msg) => node.send([null, msg]),
        error: (message, msg) => node.error(named(message), msg),
        status: many ? () => summarySoon() : (s: NodeStatus) => node.status(s),
      };
    }

    if (many && sourceSetting) {
      node.warn(`the camera list is used (${list.length} cameras): the single source "${redactUrl(sourceSetting)}" is ignored`);
    }
    const runners = many
      ? list.map((c) => new CameraRunner(c.id, c.source, settings, host(c.id)))
      : [new CameraRunner(textSetting(config.cameraId) || 'cam1', sourceSetting, settings, host(''))];
    const byId = new Map(runners.map((r) => [r.id, r]));
    for (const { id, others } of cameraIds.claim(node.id, [...byId.keys()])) {
      const names = others.map((other) => {
        const named = RED.nodes.getNode(other) as Node | null;
        return named?.name ? `"${named.name}" (${other})` : other;
      });
      node.warn(`camera id "${id}" is also used by ml-camera ${names.join(', ')}: frames are told apart by camera id ` +
        '(queues, routing, tracking, topics), so these cameras\' frames mix; give each camera its own id');
    }
    const prefix = (err: Error, runner: CameraRunner) => (many ? new Error(`camera ${runner.id}: ${err.message}`) : err);

    /** The cameras a message is for: msg.camera picks one of a list; otherwise all. */
    function addressed(msg: NodeMessage): CameraRunner[] {
      if (!many || msg.camera === undefined) return runners;
      const runner = typeof msg.camera === 'string' ? byId.get(msg.camera) : undefined;
      if (!runner) throw new Error(`Expected msg.camera to be one of ${[...byId.keys()].join(', ')} but received ${JSON.stringify(msg.camera)}`);
      return [runner];
    }

    /** One frame from each addressed camera, each sent as soon as it is there. */
    async function capture(msg: NodeMessage, targets: CameraRunner[], send: SendFunction): Promise<Error | undefined> {
      const live = targets.filter((r) => !r.finished && !r.closed);
      let failure: Error | undefined;
      await Promise.all(live.map(async (runner) => {
        const trigger = live.length === 1 ? msg : RED.util.cloneMessage(msg);
        try {
          const frame = await runner.trigger(trigger);
          if (frame && !closed) send([frame, null]);
        } catch (err) {
          if (closed) return;
          // Repeats within a second complete without raising again: their count is in the status.
          const raised = runner.triggerError(err);
          if (!raised) return;
          const named = prefix(raised, runner);
          // One error completes the message; those of the other cameras are raised beside it.
          if (!failure) failure = named;
          else node.error(named.message, { topic: `${runner.id}/error`, payload: { event: 'error', camera: runner.id, reason: raised.message } });
        }
      }));
      return failure;
    }

    node.on('input', async (msg, send, done) => {
      if (msg.command !== undefined && msg.command !== null && typeof msg.command !== 'string') {
        // Taken as a plain trigger, {stop: true} would capture a frame instead of stopping.
        return done(new Error(`Expected msg.command of start, stop or restart but received ${describeReceived(msg.command)}`));
      }
      let targets: CameraRunner[];
      try {
        targets = addressed(msg);
      } catch (err) {
        return done(err as Error);
      }
      const command = typeof msg.command === 'string' ? msg.command : undefined;
      if (command === 'stop') {
        for (const r of targets) r.stopTicks();
        if (many) summarySoon();
        else node.status({ fill: 'grey', shape: 'ring', text: 'stopped' });
        return done();
      }
      if (command === 'start' || command === 'restart') {
        for (const r of targets) {
          if (command === 'restart') r.rewind();
          r.startTicks();
        }
        if (many) summarySoon();
        return done();
      }
      if (command !== undefined) return done(new Error(`Expected msg.command of start, stop or restart but received "${command}"`));
      if (closed) return done();
      done(await capture(msg, targets, send));
    });

    node.on('close', (_removed: boolean, done: () => void) => {
      closed = true;
      cameraIds.release(node.id);
      clearTimeout(summaryTimer);
      summaryTimer = undefined;
      // Every camera stops its ticks and closes its source; live ones once their ffmpeg has exited.
      Promise.allSettled(runners.map((r) => r.close())).then(() => done());
    });

    const counted = many ? `${runners.length} cameras · ` : '';
    node.status({ fill: 'grey', shape: 'ring', text: `${counted}${timing.intervalMs > 0 ? 'starting' : 'waiting for trigger'}` });
    for (const r of runners) r.start();
  }

  RED.nodes.registerType('ml-camera', MlCamera, {
    credentials: { user: { type: 'text' }, password: { type: 'password' } },
  });
};
