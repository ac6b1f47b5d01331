import http from 'node:http';

// Preloaded into a node process by the partition specs (NODE_OPTIONS=--import=<this file>): every
// outgoing HTTP connection of the process (peer client, got, the git proxy: all use http.Agent) is
// bound to the loopback address in SPEC_SOURCE_ADDRESS, so the relays in front of the other nodes can
// tell which node a connection comes from and drop the links a partition cuts. The process's git
// children are not affected (they connect from 127.0.0.1).

const sourceAddress = process.env.SPEC_SOURCE_ADDRESS;
if (sourceAddress) {
  const createConnection = http.Agent.prototype.createConnection;
  http.Agent.prototype.createConnection = function (this: http.Agent, options, callback) {
    return createConnection.call(this, { ...options, localAddress: sourceAddress }, callback);
  };
}
