// The host pages of tests/widget/run.mjs that embed the widget from ANOTHER origin than the
// gateway's, as a trading UI on its own site does: node's http module on 127.0.0.1, two free ports,
// so two origins, "A" (put on a gateway's allow-list) and "B" (left off it). Both serve the same
// routes:
//   /<name>.html        a page registered with page(name, html), html a string or a function
//                       called for each request
//   /quote-ticker.js    web/quote-ticker.js as a page's own (self-hosted) copy
//   /api/quote-token    the host's own token endpoint, as a token provider calls it:
//                       ?case=<name>&renew=<bool>; answers what the case's handler returns (a string
//                       is the token, a number an HTTP status); every call is recorded.

import http from "node:http";

function listen(handler) {
  return new Promise((resolve, reject) => {
    const server = http.createServer(handler);
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

export async function startEmbedServer(widgetSource) {
  const pages = new Map(); // path -> html, or () => html
  const tokenCases = new Map(); // case -> (call number from 1, { renew, origin }) -> token or status
  const calls = []; // { case, renew, origin, at }
  const sockets = new Set();

  const handler = (req, res) => {
    const u = new URL(req.url, "http://embed");
    const origin = `http://${req.headers.host}`;
    if (u.pathname === "/api/quote-token") {
      const name = u.searchParams.get("case") || "";
      const renew = u.searchParams.get("renew") === "true";
      const n = calls.filter((c) => c.case === name).length + 1;
      calls.push({ case: name, renew, origin, at: Date.now() });
      const answer = tokenCases.has(name) ? tokenCases.get(name)(n, { renew, origin }) : 404;
      if (typeof answer === "number") {
        res.writeHead(answer, { "content-type": "text/plain", "cache-control": "no-store" });
        res.end(`no token (${answer})\n`);
      } else {
        res.writeHead(200, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
        res.end(answer);
      }
      return;
    }
    if (u.pathname === "/quote-ticker.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-store" });
      res.end(widgetSource);
      return;
    }
    if (pages.has(u.pathname)) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      const page = pages.get(u.pathname);
      res.end(typeof page === "function" ? page() : page);
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  };

  const servers = [await listen(handler), await listen(handler)];
  for (const s of servers) {
    s.on("connection", (c) => {
      sockets.add(c);
      c.on("close", () => sockets.delete(c));
    });
  }
  const [a, b] = servers.map((s) => `http://127.0.0.1:${s.address().port}`);
  return {
    /** The origin put on the restricted gateway's allow-list. */
    originA: a,
    /** An origin on no allow-list. */
    originB: b,
    page(name, html) {
      pages.set(`/${name}.html`, html);
    },
    tokenCase(name, answer) {
      tokenCases.set(name, answer);
    },
    calls(name) {
      return calls.filter((c) => c.case === name);
    },
    close() {
      for (const c of sockets) c.destroy();
      return Promise.all(servers.map((s) => new Promise((r) => s.close(() => r()))));
    },
  };
}

/**
 * An HTML page that embeds the widget: `head` goes in <head> (the script tags), `body` in <body>.
 * Prices are checked against the gateway, so nothing else on the page matters.
 */
export function embedPage(title, head, body) {
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>${title}</title>
  <link rel="icon" href="data:,">
${head}
</head>
<body>
  <h1>${title}</h1>
${body}
</body>
</html>
`;
}

/**
 * A module script that gives the widget a token provider calling this origin's /api/quote-token,
 * as a host page would: the token never appears in the page's markup. `scoped` maps a gateway url
 * to a token case (QuoteTicker.setToken(provider, url)); `all` is the case for every url.
 */
export function tokenScript(widgetUrl, { all, scoped = {} }) {
  const lines = [
    `    import { QuoteTicker } from ${JSON.stringify(widgetUrl)};`,
    "    const provider = (name) => async ({ renew }) => {",
    "      const r = await fetch(`/api/quote-token?case=${name}&renew=${renew}`);",
    "      if (!r.ok) throw new Error(`the token endpoint answered ${r.status}`);",
    "      return r.text();",
    "    };",
  ];
  if (all) lines.push(`    QuoteTicker.setToken(provider(${JSON.stringify(all)}));`);
  for (const [url, name] of Object.entries(scoped)) {
    lines.push(`    QuoteTicker.setToken(provider(${JSON.stringify(name)}), ${JSON.stringify(url)});`);
  }
  return `  <script type="module">\n${lines.join("\n")}\n  </script>`;
}
