/** ml-camera: emits JPEG frames with their metadata on an interval or when a message arrives. */
import sharp from 'sharp';
import { RateMeter } from '../lib/frame-queue';
import { errorMessage, Node, NodeAPI, NodeDef, NodeMessage, numberSetting, textSetting } from '../lib/red-types';
import { FfmpegSource, liveFps, LiveOptions, LiveSource, MjpegSource } from './live-sources';
import {
  detectSourceType, FileSource, FolderSource, FrameSource, looksLikeMjpeg, normaliseToJpeg, redactUrl, SnapshotSource, SourceType, TestPatternSource,
} from './sources';

/** A tick or trigger that found the previous capture still running (a deliberate skip, not a fault). */
class CaptureBusy extends Error {}

interface FrameInfo {
  camera: string;
  seq: number;
  capturedAt: string;
  width: number;
  height: number;
  origin: string;
  source: SourceType;
}

module.exports = function (RED: NodeAPI) {
  function MlCamera(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const cameraId = textSetting(config.cameraId) || 'cam1';
    const sourceSetting = textSetting(config.source);
    const configuredType = String(config.sourceType || 'auto');
    let intervalMs = 1000;
    let timeoutMs = 5000;
    let watchdogMs = 10_000;
    let maxFps = 0;
    try {
      intervalMs = numberSetting(config.interval, 1000, { min: 0, max: 86_400_000 });
      timeoutMs = numberSetting(config.timeout, 5000, { min: 100, max: 600_000 });
      watchdogMs = numberSetting(config.watchdog, 10_000, { min: 500, max: 3_600_000 });
      maxFps = numberSetting(config.maxFps, 0, { min: 0, max: 120 });
    } catch (err) {
      node.warn(`timing settings: ${errorMessage(err)}; using defaults`);
    }
    const meter = new RateMeter();
    let source: FrameSource | undefined;
    let opening: Promise<FrameSource> | undefined;
    let timer: NodeJS.Timeout | undefined;
    let capturing = false;
    let running = intervalMs > 0;
    let closed = false;
    let seq = 0;
    let skipped = 0;
    let finished = false;

    async function openSource(): Promise<FrameSource> {
      const type = configuredType === 'auto' ? await detectSourceType(sourceSetting) : (configuredType as SourceType);
      switch (type) {
        case 'pattern':
          return new TestPatternSource(numberSetting(config.patternWidth, 640, { min: 16, max: 4096 }), numberSetting(config.patternHeight, 480, { min: 16, max: 4096 }));
        case 'folder':
          return new FolderSource(sourceSetting, { loop: config.loop !== false, recursive: config.recursive !== false });
        case 'file':
          return new FileSource(sourceSetting);
        case 'url':
          return new SnapshotSource(sourceSetting, { username: node.credentials?.user, password: node.credentials?.password, timeoutMs });
        case 'mjpeg':
          return startLive(new MjpegSource(sourceSetting, liveOptions()));
        case 'rtsp':
        case 'v4l2':
          return startLive(new FfmpegSource({
            kind: type,
            url: sourceSetting,
            transport: config.transport === 'udp' ? 'udp' : 'tcp',
            fps: liveFps(intervalMs, maxFps),
            videoSize: textSetting(config.videoSize) || undefined,
            pixelFormat: textSetting(config.pixelFormat) || undefined,
            username: node.credentials?.user,
            password: node.credentials?.password,
          }, liveOptions(), textSetting(config.ffmpegPath) || 'ffmpeg'));
        default:
          throw new Error(`unknown source type "${type}"`);
      }
    }

    function liveOptions(): LiveOptions {
      return { watchdogMs, minBackoffMs: 500, maxBackoffMs: 15_000, username: node.credentials?.user, password: node.credentials?.password };
    }

    /** Live sources run by themselves; their transitions go to the second output and the status. */
    function startLive(live: LiveSource): LiveSource {
      const event = (name: 'online' | 'offline', reason?: string) => {
        node.send([null, { topic: `${cameraId}/${name}`, payload: { event: name, camera: cameraId, reason, at: new Date().toISOString(), source: live.type } }]);
      };
      live.on('online', () => {
        event('online');
        node.status({ fill: 'green', shape: 'dot', text: `${live.type} online` });
      });
      live.on('offline', (reason: string) => {
        event('offline', reason);
        node.status({ fill: 'red', shape: 'ring', text: `offline: ${reason}`.slice(0, 80) });
      });
      live.on('problem', (err: Error) => node.error(err.message, { payload: { event: 'error', camera: cameraId, reason: err.message } }));
      node.status({ fill: 'yellow', shape: 'ring', text: `connecting to ${live.type}` });
      live.start();
      return live;
    }

    function getSource(): Promise<FrameSource> {
      if (source) return Promise.resolve(source);
      opening ??= openSource().then((s) => {
        if (closed) s.close();
        source = s;
        return s;
      }).finally(() => { opening = undefined; });
      return opening;
    }

    /** A frame message; null when a finite source is exhausted, undefined when a live one has nothing new. */
    async function capture(trigger?: NodeMessage): Promise<NodeMessage | null | undefined> {
      const src = await getSource();
      const raw = src instanceof LiveSource && trigger ? await src.waitForFrame(timeoutMs) : await src.next();
      if (raw === undefined && src instanceof LiveSource && trigger) {
        throw new Error(`no frame from the ${src.type} camera within ${timeoutMs} ms (${src.state})`);
      }
      if (!raw) return raw;
      let image: Buffer;
      let meta: sharp.Metadata;
      try {
        image = await normaliseToJpeg(raw.image);
        meta = await sharp(image).metadata();
      } catch (err) {
        throw new Error(`frame from ${raw.origin} is not a readable image: ${errorMessage(err)}`);
      }
      const frame: FrameInfo = {
        camera: cameraId,
        seq: ++seq,
        capturedAt: new Date().toISOString(),
        width: meta.width ?? 0,
        height: meta.height ?? 0,
        origin: raw.origin,
        source: src.type,
      };
      const msg: NodeMessage = trigger ?? {};
      msg.payload = image;
      msg.frame = frame;
      msg.topic = msg.topic ?? cameraId;
      return msg;
    }

    function showStatus(src: FrameSource) {
      const where = sourceSetting ? redactUrl(sourceSetting).split('/').slice(-2).join('/') : 'test pattern';
      const parts = [`${meter.rate().toFixed(1)} fps`, `#${seq}`];
      if (src instanceof LiveSource) parts.unshift(src.state);
      if (skipped) parts.push(`skipped ${skipped}`);
      node.status({ fill: 'green', shape: 'dot', text: `${where} · ${parts.join(' · ')}`.slice(0, 80) });
    }

    /** One capture at a time: a tick that finds the previous capture still running is skipped. */
    async function tick(trigger?: NodeMessage, send: (m: (NodeMessage | null)[]) => void = (m) => node.send(m)): Promise<void> {
      if (capturing) {
        skipped++;
        throw new CaptureBusy('a capture is in progress');
      }
      capturing = true;
      try {
        const msg = await capture(trigger);
        if (closed || msg === undefined) return;
        if (!msg) {
          finished = true;
          stopTimer();
          node.status({ fill: 'blue', shape: 'dot', text: `finished: ${seq} frames` });
          return;
        }
        meter.tick();
        if (source) showStatus(source);
        send([msg, null]);
      } finally {
        capturing = false;
      }
    }

    function startTimer() {
      stopTimer();
      if (intervalMs <= 0 || closed) return;
      running = true;
      timer = setInterval(() => {
        tick().catch((err) => {
          if (err instanceof CaptureBusy) return;
          node.status({ fill: 'red', shape: 'ring', text: errorMessage(err).slice(0, 70) });
          node.error(errorMessage(err), {});
        });
      }, intervalMs);
    }

    function stopTimer() {
      running = false;
      if (timer) clearInterval(timer);
      timer = undefined;
    }

    node.on('input', async (msg, send, done) => {
      const command = typeof msg.command === 'string' ? msg.command : undefined;
      if (command === 'stop') {
        stopTimer();
        node.status({ fill: 'grey', shape: 'ring', text: 'stopped' });
        return done();
      }
      if (command === 'start' || command === 'restart') {
        if (command === 'restart') {
          source?.rewind();
          finished = false;
        }
        startTimer();
        return done();
      }
      if (command !== undefined) return done(new Error(`msg.command must be start, stop or restart, got "${command}"`));
      if (finished) return done();
      try {
        await tick(msg, send);
        done();
      } catch (err) {
        if (err instanceof CaptureBusy) return done(); // deliberate drop
        node.status({ fill: 'red', shape: 'ring', text: errorMessage(err).slice(0, 70) });
        done(err as Error);
      }
    });

    node.on('close', (_removed: boolean, done: () => void) => {
      closed = true;
      stopTimer();
      const closing = source;
      source = undefined;
      // Live sources wait for their ffmpeg child to exit, so a redeploy never leaves one behind.
      Promise.resolve(closing?.close()).then(() => done(), () => done());
    });

    // Live cameras connect at deploy so the first frame is ready by the first tick.
    const liveType = ['rtsp', 'v4l2', 'mjpeg'].includes(configuredType);
    if (liveType || (configuredType === 'auto' && (/^(rtsps?:|\/dev\/video)/i.test(sourceSetting) || (/^https?:/i.test(sourceSetting) && looksLikeMjpeg(sourceSetting))))) {
      getSource().catch((err) => node.error(errorMessage(err)));
    }

    if (running) {
      node.status({ fill: 'grey', shape: 'ring', text: 'starting' });
      startTimer();
    } else {
      node.status({ fill: 'grey', shape: 'ring', text: 'waiting for trigger' });
    }
  }

  RED.nodes.registerType('ml-camera', MlCamera, {
    credentials: { user: { type: 'text' }, password: { type: 'password' } },
  });
};
