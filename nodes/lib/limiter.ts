/**
 * Runs at most `slots` tasks at once; the rest wait their turn in arrival order. A task may name a
 * lane (a camera): a newer task of the same lane and queuer replaces that lane's task still waiting,
 * which is rejected with SupersededError, so that under overload a camera's frames do not pile up
 * and age. The queuer (an ml-preprocess node) keeps two branches fed by one camera apart: otherwise
 * the branch Node-RED delivers to second would replace the first one's frame every time.
 *
 * With a gate, a lane's task also waits while the gate holds that lane closed: ml-inference closes
 * a camera's lane while its queue for that camera is full, so a frame is decoded only once the
 * model has room for it. Otherwise, under overload, frames were decoded (the bulk of the CPU per
 * frame) only to be dropped by ml-inference for the same camera's next one.
 */
export class SupersededError extends Error {
  readonly superseded = true;
  constructor(lane: string) {
    super(`a newer frame of ${lane} replaced this one while it waited`);
  }
}

/** Lanes that may be closed for a while; listeners hear when one opens. */
export interface LaneGate {
  isOpen(lane: string): boolean;
  onOpen(listener: (lane: string) => void): void;
}

/**
 * A gate per lane between producers and the consumers of its frames. Without consumers a lane is
 * open; with some, it closes once every one of them holds it (each release is idempotent): a frame
 * fed to two models is decoded while either has room, as before, the other dropping it.
 */
export class HoldGate implements LaneGate {
  private readonly holds = new Map<string, number>();
  private readonly consumers = new Map<string, number>();
  private readonly listeners: ((lane: string) => void)[] = [];

  isOpen(lane: string): boolean {
    const consumers = this.consumers.get(lane) ?? 0;
    return consumers === 0 || (this.holds.get(lane) ?? 0) < consumers;
  }

  /** One more consumer of `lane`, until the returned function is called. */
  consume(lane: string): () => void {
    this.consumers.set(lane, (this.consumers.get(lane) ?? 0) + 1);
    return this.once(() => this.decrement(this.consumers, lane));
  }

  /** One consumer has no room in `lane` until the returned function is called. */
  hold(lane: string): () => void {
    this.holds.set(lane, (this.holds.get(lane) ?? 0) + 1);
    return this.once(() => this.decrement(this.holds, lane));
  }

  onOpen(listener: (lane: string) => void): void {
    this.listeners.push(listener);
  }

  /** Lanes closed now (for tests and diagnostics). */
  get closedLanes(): string[] {
    return [...this.holds.keys()].filter((lane) => !this.isOpen(lane));
  }

  private once(fn: () => void): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      fn();
    };
  }

  private decrement(counts: Map<string, number>, lane: string): void {
    const wasOpen = this.isOpen(lane);
    const left = (counts.get(lane) ?? 1) - 1;
    if (left > 0) counts.set(lane, left);
    else counts.delete(lane);
    if (!wasOpen && this.isOpen(lane)) for (const listener of this.listeners) listener(lane);
  }
}

/**
 * Shared by every ml-preprocess (its decode limiter) and ml-inference node (ModelRoom): closed for a
 * camera while an ml-inference node has no room for another frame of it, so that camera's newest
 * frame waits undecoded instead of being decoded only to be dropped or to wait long.
 */
export const modelRoomGate = new HoldGate();

/** At most this many cameras are remembered per ml-inference node for ModelRoom's look-ahead. */
const MAX_KNOWN_CAMERAS = 10_000;

/**
 * What one ml-inference node tells the decode limiter through a HoldGate. A camera's next frame
 * waits undecoded while the node's lane for that camera is full (it would only replace the frame
 * waiting there), and, for every camera the node has had frames from, while the node already has
 * `ahead` frames waiting (two batches): frames are then decoded shortly before the model is ready
 * for them, so they are fresh and their tensors do not live long (cheap to collect). Cameras that
 * only feed other nodes are never held by this one.
 */
export class ModelRoom {
  private readonly holds = new Map<string, () => void>();
  /** Cameras this node had frames of, each registered as a consumer of its lane. */
  private readonly known = new Map<string, () => void>();
  private over = false;

  constructor(private readonly gate: HoldGate, readonly ahead: number, readonly perLane: number) {}

  /** After frames of `camera` were queued or taken: `laneLength` and `waiting` describe the queue now. */
  update(camera: string, laneLength: (camera: string) => number, waiting: number): void {
    if (camera && !this.known.has(camera) && this.known.size < MAX_KNOWN_CAMERAS) this.known.set(camera, this.gate.consume(camera));
    const over = waiting >= this.ahead;
    if (over !== this.over) {
      this.over = over;
      for (const c of this.known.keys()) this.set(c, this.over || laneLength(c) >= this.perLane);
    }
    if (camera) this.set(camera, (this.over && this.known.has(camera)) || laneLength(camera) >= this.perLane);
  }

  /** Opens every lane this node holds (it is closing). */
  releaseAll(): void {
    const releases = [...this.holds.values(), ...this.known.values()];
    this.holds.clear();
    this.known.clear();
    this.over = false;
    releases.forEach((release) => release());
  }

  private set(camera: string, closed: boolean): void {
    const release = this.holds.get(camera);
    if (closed && !release && this.known.has(camera)) this.holds.set(camera, this.gate.hold(camera));
    else if (!closed && release) {
      this.holds.delete(camera);
      release();
    }
  }
}

interface Waiting {
  lane?: string;
  queuer?: string;
  start: () => void;
  supersede: () => void;
}

export class Limiter {
  private running = 0;
  private readonly waiting: Waiting[] = [];

  constructor(readonly slots: number, private readonly gate?: LaneGate) {
    if (!Number.isInteger(slots) || slots < 1) throw new Error(`Expected at least 1 slot but received ${slots}`);
    gate?.onOpen(() => this.startWaiting());
  }

  async run<T>(task: () => Promise<T>, lane?: string, queuer?: string): Promise<T> {
    if (this.running < this.slots && this.isOpen(lane)) {
      this.running++;
    } else {
      // Counted as running by whoever starts it (startWaiting).
      await new Promise<void>((start, reject) => {
        const entry = { lane, queuer, start, supersede: () => reject(new SupersededError(lane ?? '')) };
        // The newer frame takes the older one's place: a camera waits its turn from when it began
        // to wait, however often its frame is replaced meanwhile (no camera is passed over for good).
        const older = lane === undefined ? -1 : this.waiting.findIndex((w) => w.lane === lane && w.queuer === queuer);
        if (older >= 0) {
          this.waiting[older].supersede();
          this.waiting[older] = entry;
        } else {
          this.waiting.push(entry);
        }
      });
    }
    try {
      return await task();
    } finally {
      this.running--;
      this.startWaiting();
    }
  }

  private isOpen(lane: string | undefined): boolean {
    return lane === undefined || !this.gate || this.gate.isOpen(lane);
  }

  /** Starts waiting tasks whose lane is open, in arrival order, while slots are free. */
  private startWaiting(): void {
    for (let i = 0; i < this.waiting.length && this.running < this.slots;) {
      const next = this.waiting[i];
      if (!this.isOpen(next.lane)) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      this.running++;
      next.start();
    }
  }
}
