/** ml-route: one output per rule plus an "uncertain" output, on the prediction from ml-inference. */
import { failMessage, showError, StatusThrottle } from '../lib/node-status';
import type { RouteInfo } from '../lib/messages';
import { describeReceived, errorMessage, Node, NodeAPI, NodeDef, NodeMessage, numberSetting } from '../lib/red-types';
import { Router, validateRules } from './routing';

const EXPECTED_PREDICTION = 'msg.payload must be a classification {label, score} from ml-inference';

function predictionOf(msg: NodeMessage): { label: string; score: number } {
  const p = msg.payload as { label?: unknown; score?: unknown } | undefined;
  if (!p || typeof p !== 'object' || Array.isArray(p) || Buffer.isBuffer(p)) throw new Error(`${EXPECTED_PREDICTION}, got ${describeReceived(p)}`);
  if (typeof p.label !== 'string') throw new Error(`${EXPECTED_PREDICTION}: msg.payload.label is ${describeReceived(p.label)}`);
  if (typeof p.score !== 'number') throw new Error(`${EXPECTED_PREDICTION}: msg.payload.score is ${describeReceived(p.score)}`);
  // Thresholds are probabilities: a logit or a NaN would be routed by comparison alone, to any bin.
  if (!Number.isFinite(p.score)) {
    throw new Error(`msg.payload.score must be a finite number from 0 to 1, got ${p.score}; a model that outputs NaN or Infinity cannot be routed`);
  }
  if (p.score < 0 || p.score > 1) {
    throw new Error(`msg.payload.score must be a finite number from 0 to 1, got ${p.score}; thresholds compare probabilities (is ml-inference set to raw output?)`);
  }
  return { label: p.label, score: p.score };
}

module.exports = function (RED: NodeAPI) {
  function MlRoute(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    let router: Router | undefined;
    let configError: string | undefined;
    try {
      router = new Router({
        rules: validateRules(config.rules, numberSetting(config.defaultThreshold, 0.6, { min: 0, max: 1, name: 'defaultThreshold' })),
        uncertainName: String(config.uncertainName || 'review'),
        consecutive: numberSetting(config.consecutive, 1, { min: 1, max: 100, name: 'consecutive' }),
      });
    } catch (err) {
      configError = `invalid routing rules: ${errorMessage(err)}`;
      showError(node, 'invalid rules');
      node.error(configError);
    }
    const counts = new Map<string, number>();
    const statusThrottle = new StatusThrottle(node);

    node.on('input', (msg, send, done) => {
      if (!router) return done(new Error(configError));
      try {
        if (msg.reset === true) {
          router.reset();
          return done();
        }
        const { label, score } = predictionOf(msg);
        const camera = String((msg.frame as { camera?: unknown } | undefined)?.camera ?? 'default');
        const decision = router.decide(label, score, camera);
        msg.route = { bin: decision.bin, output: decision.output, reason: decision.reason, threshold: decision.threshold, agreeing: decision.agreeing } satisfies RouteInfo;
        if (decision.output === null) {
          const { agreeing } = decision;
          const needed = router.options.consecutive;
          statusThrottle.update(() => ({ fill: 'yellow', shape: 'ring', text: `${label}: ${agreeing} of ${needed} frames agree` }));
          return done(); // held until enough frames agree
        }
        (msg.payload as Record<string, unknown>).bin = decision.bin;
        counts.set(decision.bin, (counts.get(decision.bin) ?? 0) + 1);
        const fill = decision.output === router.uncertainOutput ? 'yellow' : 'green';
        statusThrottle.update(() => ({ fill, shape: 'dot', text: [...counts].map(([bin, n]) => `${bin} ${n}`).join(' · ').slice(0, 80) }));
        const outputs: (NodeMessage | null)[] = new Array(router.uncertainOutput + 1).fill(null);
        outputs[decision.output] = msg;
        send(outputs);
        done();
      } catch (err) {
        statusThrottle.stop();
        failMessage(node, done, err);
      }
    });

    node.on('close', () => statusThrottle.stop());
  }

  RED.nodes.registerType('ml-route', MlRoute);
};
