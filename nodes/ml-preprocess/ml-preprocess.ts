/** ml-preprocess: image Buffer -> model input tensor (sharp), settings from the model or the dialog. */
import { failMessage, showError, StatusThrottle } from '../lib/node-status';
import { SupersededError } from '../lib/limiter';
import { cameraOf, frameOf, PreprocessInfo } from '../lib/messages';
import { imageToTensor } from '../lib/preprocess';
import { PreprocessSpec, validatePreprocessSpec, validateRoi } from '../lib/preprocess-spec';
import { errorMessage, Node, NodeAPI, NodeDef, NodeMessage } from '../lib/red-types';
import type { MlModelNode } from '../ml-model/ml-model';

module.exports = function (RED: NodeAPI) {
  function MlPreprocess(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const model = config.model ? (RED.nodes.getNode(String(config.model)) as MlModelNode | null) : null;
    const useModelSettings = Boolean(model) && config.settingsFrom !== 'dialog';
    let dialogSpec: PreprocessSpec | undefined;
    let configError: string | undefined;
    try {
      const roi = config.roiEnabled
        ? validateRoi({ x: config.roiX, y: config.roiY, width: config.roiWidth, height: config.roiHeight })
        : undefined;
      if (!useModelSettings) {
        dialogSpec = validatePreprocessSpec({
          width: config.width, height: config.height, resize: config.resize, channels: config.channels,
          layout: config.layout, dtype: config.dtype, mean: config.mean, std: config.std, roi,
          pad: config.resize === 'contain' ? config.pad : undefined,
        });
      } else if (roi) {
        dialogSpec = { roi } as PreprocessSpec; // only the region of interest comes from the dialog
      }
    } catch (err) {
      configError = `invalid pre-processing settings: ${errorMessage(err)}`;
      showError(node, 'invalid settings');
      node.error(configError);
    }
    if (config.model && !model && config.settingsFrom !== 'dialog') {
      configError = 'the selected ml-model config node is missing';
      showError(node, 'no model');
    }
    // Registered only when its settings are used: a registered user keeps the model loaded.
    const modelUser = useModelSettings ? model : null;
    if (modelUser) modelUser.register(node);
    const statusThrottle = new StatusThrottle(node);
    let superseded = 0;

    async function currentSpec(msg: NodeMessage): Promise<PreprocessSpec> {
      let spec: PreprocessSpec;
      if (useModelSettings && model) {
        const loaded = await model.ready();
        if (!loaded.preprocess) {
          throw new Error(`model ${loaded.path} has no "preprocess" metadata; choose "settings from this dialog"`);
        }
        spec = dialogSpec?.roi ? { ...loaded.preprocess, roi: dialogSpec.roi } : loaded.preprocess;
      } else {
        spec = dialogSpec as PreprocessSpec;
      }
      if (msg.roi !== undefined) {
        try {
          const roi = validateRoi(msg.roi);
          spec = { ...spec, roi };
        } catch (err) {
          throw new Error(`msg.roi: ${errorMessage(err)}`);
        }
      }
      return spec;
    }

    node.on('input', async (msg, send, done) => {
      if (configError) return done(new Error(configError));
      try {
        const spec = await currentSpec(msg);
        const image = msg.payload as Buffer;
        const result = await imageToTensor(image, spec, frameOf(msg) ? cameraOf(msg) : undefined, node.id);
        msg.image = image; // the original frame travels on for saving or display
        msg.payload = result.tensor;
        msg.preprocess = {
          ms: Math.round(result.ms * 100) / 100,
          sourceWidth: result.sourceWidth,
          sourceHeight: result.sourceHeight,
          width: spec.width,
          height: spec.height,
          roi: spec.roi,
          resize: spec.resize,
          // Exactly which part of the frame went where in the input: ml-inference maps boxes back with it.
          geometry: result.geometry,
        } satisfies PreprocessInfo;
        const ms = Math.round(result.ms);
        statusThrottle.update(() => ({ fill: 'green', shape: 'dot', text: `${spec.width}x${spec.height} · ${ms} ms` }));
        send(msg);
        done();
      } catch (err) {
        if (err instanceof SupersededError) {
          // Overloaded: this camera's newer frame goes instead (a deliberate drop, as in ml-inference).
          superseded++;
          statusThrottle.update(() => ({ fill: 'yellow', shape: 'dot', text: `overloaded: ${superseded} older frames skipped` }));
          return done();
        }
        statusThrottle.stop();
        failMessage(node, done, err);
      }
    });

    node.on('close', (removed: boolean, done: () => void) => {
      statusThrottle.stop();
      if (modelUser) modelUser.deregister(node, done, removed);
      else done();
    });
  }

  RED.nodes.registerType('ml-preprocess', MlPreprocess);
};
