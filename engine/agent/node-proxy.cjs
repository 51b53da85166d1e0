// isol8: route Node's fetch and http(s) through the filtered network's proxy.
// Node ignores HTTP_PROXY/HTTPS_PROXY unless NODE_USE_ENV_PROXY is set, and then tunnels plain
// http:// with CONNECT too; so the agent preloads this file (NODE_OPTIONS=--require) in filtered
// mode only. Hosts in NO_PROXY (localhost) are reached directly.
'use strict';
if (typeof Deno === 'undefined' && !process.versions.bun) {  // Deno and Bun honour the variables
const http = require('http');
const https = require('https');
const net = require('net');
const tls = require('tls');

const PROXY = { host: '127.0.0.1', port: 8118 };
const direct = (host) => (process.env.NO_PROXY || '').split(',').includes(host);

try {
  const { setGlobalDispatcher, Agent, Dispatcher, Pool, ProxyAgent } = require('/usr/local/lib/isol8-node/undici');
  const proxyOrigin = `http://${PROXY.host}:${PROXY.port}`;
  const viaProxy = new ProxyAgent(proxyOrigin);  // https: a CONNECT tunnel
  // http: the absolute-URI form, one request per connection (ProxyAgent would tunnel it with
  // CONNECT, which the proxy allows to port 443 and its listed ports only).
  const forward = new Pool(proxyOrigin, { pipelining: 0 });
  const plain = new Agent();
  const withHost = (headers, host) => {
    const list = Array.isArray(headers) ? [...headers] : Object.entries(headers || {}).flat();
    for (let i = 0; i < list.length; i += 2) if (String(list[i]).toLowerCase() === 'host') return list;
    return ['host', host, ...list];
  };
  class Router extends Dispatcher {
    dispatch(options, handler) {
      const url = new URL(options.origin);
      if (direct(url.hostname)) return plain.dispatch(options, handler);
      if (url.protocol === 'https:') return viaProxy.dispatch(options, handler);
      const target = { ...options, origin: proxyOrigin, path: url.origin + options.path, headers: withHost(options.headers, url.host) };
      return forward.dispatch(target, handler);
    }
    close() { return Promise.all([viaProxy.close(), forward.close(), plain.close()]); }
    destroy() { return Promise.all([viaProxy.destroy(), forward.destroy(), plain.destroy()]); }
  }
  setGlobalDispatcher(new Router());
} catch (error) {
  process.emitWarning(`isol8: fetch is not routed through the proxy (${error.message})`);
}

class ProxiedHttpAgent extends http.Agent {
  // The proxy routes origin-form requests by their Host header.
  createConnection(options, callback) {
    if (direct(options.host)) return super.createConnection(options, callback);
    return net.connect(PROXY.port, PROXY.host);
  }
}

class ProxiedHttpsAgent extends https.Agent {
  createConnection(options, callback) {
    if (direct(options.host)) return super.createConnection(options, callback);
    const target = `${options.host}:${options.port || 443}`;
    const request = http.request({ ...PROXY, method: 'CONNECT', path: target, headers: { host: target }, agent: false });
    request.once('connect', (response, socket) => {
      if (response.statusCode !== 200) {
        socket.destroy();
        callback(new Error(`isol8 proxy refused ${target}: HTTP ${response.statusCode}`));
        return;
      }
      callback(null, tls.connect({ ...options, socket, servername: options.servername || options.host }));
    });
    request.once('error', callback);
    request.end();
  }
}

http.globalAgent = new ProxiedHttpAgent();
https.globalAgent = new ProxiedHttpsAgent();
}
