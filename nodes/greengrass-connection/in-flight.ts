/**
 * Publishes a transport has handed to its client and not yet seen settled. A client stopped with
 * publishes in flight may never settle them (aws-iot-device-sdk-v2's MQTT 5 client leaves a QoS 1
 * publish whose PUBACK had not come pending for ever once it is stopped and closed), and whoever
 * awaits one (the spool's drain pass) would wait for ever too. After the client stops, failAll()
 * rejects what is left: those messages are still in the spool and go again after the next start.
 */
export class InFlightPublishes {
  private readonly pending = new Map<(err: Error) => void, string>();

  track<T>(topic: string, operation: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.set(reject, topic);
      operation.then(resolve, reject).finally(() => this.pending.delete(reject));
    });
  }

  /** Rejects every publish still in flight; `why` completes "the publish to <topic> was not confirmed: ...". */
  failAll(why: string): void {
    for (const [reject, topic] of this.pending) reject(new Error(`the publish to ${topic} was not confirmed: ${why}`));
    this.pending.clear();
  }
}
