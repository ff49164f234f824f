// At start: does the component's access policy let it publish where the flow publishes? A deployment
// that changes topicPrefix (or cameraId) without accessControl would have every result refused by the
// nucleus; this says so at once, naming what to merge, instead of failing message by message.
//
// The recipe passes the accessControl configuration as SORTER_ACCESS_CONTROL: the nucleus interpolates
// an object as its JSON text. Matching follows the nucleus's AuthorizationHandler for local pub/sub:
// `*` matches any characters, `/` included; `${c}` is the literal c; MQTT wildcards (+ #) mean nothing here.
const PUBSUB = 'aws.greengrass.ipc.pubsub';
const PUBLISH = 'aws.greengrass#PublishToTopic';

function globToRegExp(resource) {
  let out = '';
  for (let i = 0; i < resource.length; i++) {
    const c = resource[i];
    if (c === '$' && resource[i + 1] === '{' && resource[i + 3] === '}') {
      out += resource[i + 2].replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
      i += 3;
    } else if (c === '*') out += '[\\s\\S]*';
    else out += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  }
  return new RegExp(`^${out}$`);
}

/** True when some pub/sub policy allows PublishToTopic on the topic. */
function grants(accessControl, topic, operation = PUBLISH) {
  const policies = Object.values(accessControl?.[PUBSUB] ?? {});
  return policies.some((p) => Array.isArray(p?.operations) && (p.operations.includes(operation) || p.operations.includes('*'))
    && Array.isArray(p.resources) && p.resources.some((r) => typeof r === 'string' && globToRegExp(r).test(topic)));
}

/**
 * The cameras of the sorter flow, {id, source}: those of SORTER_CAMERAS (parsed as the camera node
 * does), else the one of SORTER_CAMERA_ID and SORTER_SOURCE.
 */
function sorterCameras(env) {
  if ((env.SORTER_CAMERAS || '').trim()) {
    // The installed collection in the artifact; this checkout's compiled nodes when run from the repository.
    for (const module of ['node-red-contrib-greengrass-ml/nodes/ml-camera/camera-list', '../../nodes/ml-camera/camera-list']) {
      let parse;
      try {
        parse = require(module).parseCameraList;
      } catch {
        continue;
      }
      try {
        return parse(env.SORTER_CAMERAS);
      } catch {
        break; // a list the camera node refuses is reported by it, naming the entry
      }
    }
  }
  return [{ id: env.SORTER_CAMERA_ID || 'cam1', source: (env.SORTER_SOURCE || '').trim() }];
}

/** The topics the sorter flow publishes to (flows/recycling-sorter.json). */
function flowTopics(env) {
  const prefix = env.SORTER_TOPIC_PREFIX || 'recycling';
  return sorterCameras(env).map((c) => c.id).flatMap((camera) => ['result', 'divert', 'camera'].map((leaf) => `${prefix}/${camera}/${leaf}`));
}

function checkPublishGrants(env = process.env) {
  const transport = (env.SORTER_TRANSPORT || 'auto').trim().toLowerCase();
  const underNucleus = Boolean(env.SVCUID && env.AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT);
  if (transport === 'mqtt' || (transport === 'auto' && !underNucleus)) return { note: 'results go over MQTT; no IPC access policy applies' };
  let accessControl;
  try {
    accessControl = JSON.parse(env.SORTER_ACCESS_CONTROL ?? '');
  } catch {
    return { error: `no accessControl in the component configuration (SORTER_ACCESS_CONTROL is ${JSON.stringify(env.SORTER_ACCESS_CONTROL ?? null)}): the nucleus would refuse every result` };
  }
  const topics = flowTopics(env);
  const refused = topics.filter((t) => !grants(accessControl, t));
  if (!refused.length) return { note: `accessControl grants PublishToTopic on ${topics.join(', ')}` };
  const prefix = env.SORTER_TOPIC_PREFIX || 'recycling';
  const granted = Object.values(accessControl?.[PUBSUB] ?? {}).flatMap((p) => p?.resources ?? []);
  return {
    error: `the flow publishes to ${refused.join(', ')}, which accessControl does not grant (it grants ${granted.length ? granted.join(', ') : 'nothing'} `
      + `under ${PUBSUB}): topicPrefix and accessControl change together. Merge, in the same deployment, `
      + `{"accessControl":{"${PUBSUB}":{"com.example.RecyclingSorter:pubsub:1":{"operations":["${PUBLISH}"],"resources":["${prefix}/*/result","${prefix}/*/divert","${prefix}/*/camera"]}}}}`
      + ', or build the component with --topic-prefix',
  };
}

module.exports = { checkPublishGrants, grants, globToRegExp, flowTopics, sorterCameras };
