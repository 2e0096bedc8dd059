// A development aid for tests/widget/run.mjs, used only with QUOTEGW_WEB_OVERLAY=1: a proxy in front
// of a gateway binary whose embedded web/ files (include_str! at build time) are older than the ones
// on disk, so that the browser test can exercise the files being edited without a rebuild.
//
// Everything passes through unchanged (status, every header, WebSocket upgrades byte for byte, close
// frames included) except the body of a 200 answer for one of the asset routes, which becomes the
// file on disk (and its Content-Length). The gateway's CORS, ETag and Cache-Control headers are
// therefore the gateway's own, so the cross-origin checks still test the gateway. (Playwright's
// route.fulfill cannot be used for this: Chromium applies no CORS check to a fulfilled response.)
// When the gateway is down, a connection to the proxy is dropped, which a browser sees as it sees a
// refused connection. CI (tests/web.rs) never needs this: it runs the binary it just built.

import http from "node:http";
import net from "node:net";

/**
 * Listens on 127.0.0.1:`port` and forwards to 127.0.0.1:`upstreamPort`; `files` maps a route
 * ("/widget/quote-ticker.js") to the body to serve instead of the gateway's. Resolves to { close }.
 */
export function startOverlay(port, upstreamPort, files) {
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    const up = http.request(
      { host: "127.0.0.1", port: upstreamPort, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        const path = new URL(req.url, "http://overlay").pathname;
        if (upRes.statusCode === 200 && files.has(path)) {
          upRes.resume();
          const body = files.get(path);
          const headers = { ...upRes.headers, "content-length": String(body.length) };
          delete headers["transfer-encoding"];
          res.writeHead(200, headers);
          res.end(body);
          return;
        }
        res.writeHead(upRes.statusCode, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on("error", () => req.socket.destroy());
    req.pipe(up);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.on("upgrade", (req, socket, head) => {
    const up = net.connect(upstreamPort, "127.0.0.1");
    up.on("connect", () => {
      let raw = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${raw}\r\n`);
      if (head && head.length) up.write(head);
      socket.pipe(up);
      up.pipe(socket);
    });
    const drop = () => {
      socket.destroy();
      up.destroy();
    };
    up.on("error", drop);
    up.on("close", drop);
    socket.on("error", drop);
    socket.on("close", drop);
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(port, "127.0.0.1", () =>
      resolve({
        close() {
          for (const s of sockets) s.destroy();
          return new Promise((r) => server.close(() => r()));
        },
      }),
    );
  });
}
