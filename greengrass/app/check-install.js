// Install step of the component: fail the deployment early, with a clear message, when the artifact's
// native modules do not fit this device (built for another architecture or C library).
const checks = ['onnxruntime-node', 'sharp', 'aws-crt', 'node-red'];
for (const name of checks) {
  try {
    require(require.resolve(name, { paths: [__dirname] }));
  } catch (err) {
    console.error(`recycling sorter: ${name} cannot load on this device (${process.platform}-${process.arch}, Node ${process.version}): ${err.message}`);
    console.error('Build the artifact on a machine of the same architecture: node tools/build-component.js');
    process.exit(1);
  }
}
console.log(`recycling sorter: ${checks.join(', ')} load on ${process.platform}-${process.arch}`);
