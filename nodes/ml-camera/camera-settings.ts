/** The camera's timing settings, checked once at deploy, with errors that name the setting. */
import { textSetting } from '../lib/red-types';

/**
 * Shortest interval accepted. Below it a camera node only burns CPU: no camera source here delivers
 * 20 frames a second usefully to a classifier, and a 1 ms timer turns any fault into an error storm.
 */
export const MIN_INTERVAL_MS = 50;

/** Every capture ends within this, whatever the interval (a bound on a stuck camera). */
export const MIN_CAPTURE_DEADLINE_MS = 10_000;
export const MAX_CAPTURE_DEADLINE_MS = 600_000;

export interface CameraTiming {
  /** Time between frames; 0: only when a message arrives. */
  intervalMs: number;
  /** Snapshot: longest silence of the camera; live trigger: longest wait for a new frame. */
  timeoutMs: number;
  /** Live sources: no frame for this long means offline. */
  watchdogMs: number;
  /** Live sources: decode cap (0: twice the emission rate). */
  maxFps: number;
  /** The overall limit of one capture, see captureDeadlineMs. */
  captureDeadlineMs: number;
}

/**
 * The overall deadline of one capture: three intervals (a capture may span a tick or two on a slow
 * camera, one that blocks three is stuck), at least 10 s so a slow snapshot on a short interval is not
 * cut off, never less than the idle timeout (whose message is more precise), at most 10 minutes.
 */
export function captureDeadlineMs(intervalMs: number, timeoutMs: number): number {
  return Math.min(MAX_CAPTURE_DEADLINE_MS, Math.max(MIN_CAPTURE_DEADLINE_MS, 3 * intervalMs, timeoutMs));
}

/**
 * A number setting from the editor (a string, a number or an unset ${ENV}), or the fallback when
 * empty; out of range or not a number throws an error naming the setting.
 */
export function namedNumberSetting(config: Record<string, unknown>, name: string, fallback: number, min: number, max: number, unit: string, note = ''): number {
  const raw = config[name];
  const value = typeof raw === 'string' ? textSetting(raw) : raw;
  if (value === undefined || value === null || value === '') return fallback;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new Error(`Expected ${name} to be a number of ${unit}${note} but received ${JSON.stringify(raw)}`);
  if (n < min) throw new Error(`Expected ${name} of at least ${min} ${unit}${note} but received ${n}`);
  if (n > max) throw new Error(`Expected ${name} of at most ${max} ${unit}${note} but received ${n}`);
  return n;
}

/** Reads and checks the timing settings; throws the first problem, naming the setting. */
export function readCameraTiming(config: Record<string, unknown>): CameraTiming {
  let intervalMs = namedNumberSetting(config, 'interval', 1000, 0, 86_400_000, 'ms', ` (or 0: capture only when a message arrives)`);
  if (intervalMs > 0 && intervalMs < MIN_INTERVAL_MS) {
    throw new Error(`Expected interval of at least ${MIN_INTERVAL_MS} ms (or 0: capture only when a message arrives) but received ${intervalMs}`);
  }
  intervalMs = Math.round(intervalMs);
  const timeoutMs = namedNumberSetting(config, 'timeout', 5000, 100, 600_000, 'ms');
  const watchdogMs = namedNumberSetting(config, 'watchdog', 10_000, 500, 3_600_000, 'ms');
  const maxFps = namedNumberSetting(config, 'maxFps', 0, 0, 120, 'frames per second', ' (0: twice the emission rate)');
  return { intervalMs, timeoutMs, watchdogMs, maxFps, captureDeadlineMs: captureDeadlineMs(intervalMs, timeoutMs) };
}
