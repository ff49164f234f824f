#!/usr/bin/env bash
# Installs the Debian packages the tests run for real, when missing: mosquitto (the MQTT 5 broker),
# ffmpeg (decodes RTSP for ml-camera, and publishes a test RTSP stream) and GStreamer's RTSP server
# with Python bindings (a test camera that also speaks RTP interleaved over TCP), and Chromium (the
# editor check drives it through playwright-core, which downloads no browser of its own), and numpy
# with PIL for the synthetic conveyor belts of the counting tests.
set -euo pipefail
missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" >/dev/null 2>&1 \
  || missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# numpy and PIL build the counting tests' belt sequences from validation photos (tools/train/scenes.py).
/usr/bin/python3 -c "import numpy, PIL" >/dev/null 2>&1 || missing+=(python3-numpy python3-pil)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "tests need: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
