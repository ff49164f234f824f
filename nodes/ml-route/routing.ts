/** Routing rules for ml-route: class sets -> outputs with thresholds, optional N-frame agreement. */
import { textSetting } from '../lib/red-types';

export interface RouteRule {
  /** Name of the destination (the bin), reported on msg.route.bin. */
  name: string;
  labels: string[];
  /** Minimum score (0..1) to route here; below it the prediction is uncertain. */
  threshold: number;
}

export interface RouterOptions {
  rules: RouteRule[];
  /** Bin name reported for uncertain predictions (the last output). */
  uncertainName: string;
  /** Frames of one camera that must agree before a prediction is routed to a rule (1 = every frame). */
  consecutive: number;
}

export interface Decision {
  /** Output index; rules.length is the uncertain output; null means hold (waiting for agreement). */
  output: number | null;
  bin: string;
  reason: 'matched' | 'below-threshold' | 'no-rule' | 'waiting-for-agreement';
  threshold?: number;
  agreeing: number;
}

const MAX_TRACKED_CAMERAS = 1000;

/** Rules whose threshold is empty, or an unset ${ENV} reference, take `defaultThreshold`. */
export function validateRules(raw: unknown, defaultThreshold = 0.6): RouteRule[] {
  if (!Array.isArray(raw) || raw.length === 0) throw new Error('at least one routing rule is needed');
  return raw.map((r, i) => {
    const rule = r as Record<string, unknown>;
    const labels = (Array.isArray(rule.labels) ? rule.labels : String(rule.labels ?? '').split(','))
      .map((l) => String(l).trim())
      .filter(Boolean);
    const given = typeof rule.threshold === 'string' ? textSetting(rule.threshold) : rule.threshold;
    const threshold = given === undefined || given === null || given === '' ? defaultThreshold : Number(given);
    if (!labels.length) throw new Error(`rule ${i + 1} names no class`);
    if (!Number.isFinite(threshold) || threshold < 0 || threshold > 1) {
      throw new Error(`rule ${i + 1} threshold must be between 0 and 1, got ${JSON.stringify(rule.threshold)}`);
    }
    const name = String(rule.name ?? '').trim() || labels.join('+');
    return { name, labels, threshold };
  });
}

export class Router {
  private readonly history = new Map<string, string[]>();

  constructor(readonly options: RouterOptions) {
    if (!Number.isInteger(options.consecutive) || options.consecutive < 1) {
      throw new Error(`consecutive frames must be a whole number of at least 1, got ${options.consecutive}`);
    }
  }

  get uncertainOutput(): number {
    return this.options.rules.length;
  }

  decide(label: string, score: number, camera = 'default'): Decision {
    const { rules, uncertainName, consecutive } = this.options;
    const index = rules.findIndex((r) => r.labels.includes(label));
    if (index < 0) {
      this.remember(camera, undefined);
      return { output: this.uncertainOutput, bin: uncertainName, reason: 'no-rule', agreeing: 0 };
    }
    const rule = rules[index];
    if (!(score >= rule.threshold)) {
      this.remember(camera, undefined);
      return { output: this.uncertainOutput, bin: uncertainName, reason: 'below-threshold', threshold: rule.threshold, agreeing: 0 };
    }
    const agreeing = this.remember(camera, label);
    if (agreeing < consecutive) {
      return { output: null, bin: rule.name, reason: 'waiting-for-agreement', threshold: rule.threshold, agreeing };
    }
    return { output: index, bin: rule.name, reason: 'matched', threshold: rule.threshold, agreeing };
  }

  /** Records a confident label (or a break in the run) and returns how many recent frames agree. */
  private remember(camera: string, label: string | undefined): number {
    const n = this.options.consecutive;
    if (n === 1) return label === undefined ? 0 : 1;
    let recent = this.history.get(camera);
    if (!recent) {
      if (this.history.size >= MAX_TRACKED_CAMERAS) this.history.delete(this.history.keys().next().value as string);
      recent = [];
      this.history.set(camera, recent);
    }
    if (label === undefined) {
      recent.length = 0;
      return 0;
    }
    if (recent.length && recent[recent.length - 1] !== label) recent.length = 0;
    recent.push(label);
    if (recent.length > n) recent.shift();
    return recent.length;
  }

  reset(): void {
    this.history.clear();
  }
}
