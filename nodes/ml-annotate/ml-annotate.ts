/**
 * ml-annotate: draws what ml-inference found (boxes, labels and scores, or the classification
 * label) onto the frame, as a JPEG. The drawing is in lib/annotate.ts; this file wires it up.
 */
import { failMessage, showError } from '../lib/node-status';
import { annotateImage, AnnotateOptions, overlayFor } from '../lib/annotate';
import { DEFAULT_RATE, DEFAULT_SIZE, liveViewAllowed, liveViewHub, MAX_RATE, MAX_SIZE, NodeLiveView, RUNTIME_SETTING } from '../lib/live-view';
import { describeReceived, errorMessage, Node, NodeAPI, NodeDef, numberSetting, textSetting } from '../lib/red-types';

module.exports = function (RED: NodeAPI) {
  // Listening for editors from the start: one may say it shows live views before any node is deployed.
  const hub = RED.events ? liveViewHub(RED.events) : undefined;

  function MlAnnotate(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const output = textSetting(config.output) || 'annotated';
    let options: AnnotateOptions = {};
    let settingError: string | undefined;
    try {
      options = {
        quality: numberSetting(config.quality, 85, { min: 1, max: 100, name: 'quality' }),
        lineWidth: numberSetting(config.lineWidth, 0, { min: 0, max: 100, name: 'lineWidth' }),
        fontSize: numberSetting(config.fontSize, 0, { min: 0, max: 500, name: 'fontSize' }),
      };
    } catch (err) {
      settingError = `annotation not started: ${errorMessage(err)}`;
      showError(node, errorMessage(err));
      node.error(settingError);
    }
    let lastStatusAt = 0;

    // The live view: the newest annotated frame under the node in the editor (off unless ticked).
    let liveView: NodeLiveView | undefined;
    if (config.liveView === true && hub && !settingError) {
      if (!liveViewAllowed(RED.settings)) {
        node.log(`live view not shown: it is off in the runtime's settings (${RUNTIME_SETTING})`);
      } else {
        try {
          liveView = new NodeLiveView(hub, node.id, {
            rate: numberSetting(config.liveViewRate, DEFAULT_RATE, { min: 0.1, max: MAX_RATE, name: 'liveViewRate' }),
            size: Math.round(numberSetting(config.liveViewSize, DEFAULT_SIZE, { min: 32, max: MAX_SIZE, name: 'liveViewSize' })),
          });
        } catch (err) {
          node.warn(`live view not shown: ${errorMessage(err)}`);
        }
      }
    }
    // Redeployed with the live view off: the editors drop the image they show.
    if (!liveView && hub) new NodeLiveView(hub, node.id, { rate: 1, size: DEFAULT_SIZE }).clear();

    node.on('input', async (msg, send, done) => {
      if (settingError) return done(new Error(settingError));
      try {
        // The frame is msg.image (ml-preprocess passes it on) with ml-inference's result in
        // msg.payload; or, as node-red-node-annotate-image takes it, msg.payload with msg.annotations.
        const frameInPayload = Buffer.isBuffer(msg.payload);
        const frame = frameInPayload ? msg.payload : msg.image;
        if (!Buffer.isBuffer(frame)) {
          throw new Error(`Expected msg.image to be the frame (an image Buffer, as ml-preprocess passes it on) but received ${describeReceived(frame)}`);
        }
        if (frameInPayload && !Array.isArray(msg.annotations)) {
          throw new Error(`msg.payload is an image, so expected msg.annotations to be a list of boxes but received ${describeReceived(msg.annotations)}`);
        }
        const overlay = overlayFor(frameInPayload ? undefined : msg.payload, msg.annotations);
        const started = Date.now();
        const result = await annotateImage(frame as Buffer, overlay, options);
        RED.util.setMessageProperty(msg, output, result.image, true);
        const now = Date.now();
        if (now - lastStatusAt >= 500) {
          lastStatusAt = now;
          const what = overlay.caption ? overlay.caption.text : `${overlay.shapes.length} box${overlay.shapes.length === 1 ? '' : 'es'}`;
          node.status({ fill: 'green', shape: 'dot', text: `${what} · ${Date.now() - started} ms` });
        }
        send(msg);
        done();
        // After the message is on its way; costs nothing unless an editor shows live views.
        if (liveView) void liveView.offer(result.image);
      } catch (err) {
        failMessage(node, done, err);
      }
    });

    node.on('close', (removed: boolean, done: () => void) => {
      liveView?.close();
      if (removed && liveView) liveView.clear();
      done();
    });
  }

  RED.nodes.registerType('ml-annotate', MlAnnotate, {
    // Exported to the editor, which then says the live view is off when a setting file switched it off.
    settings: { [RUNTIME_SETTING]: { value: true, exportable: true } },
  });
};
