// The order service of the Weft demo: an ordinary Node.js program that knows nothing of
// the mesh. GET /order?amount=N calls the payment service by name and reports who answered.
const http = require("http");

const port = Number(process.env.PORT || 8080);
const payments = process.env.PAYMENTS_URL || "http://payments:3000";

http.createServer((req, res) => {
  const url = new URL(req.url, "http://orders");
  if (url.pathname !== "/order") {
    res.writeHead(404, { "content-type": "text/plain" });
    return res.end("no such page\n");
  }
  const amount = url.searchParams.get("amount") || "10";
  const call = http.request(`${payments}/charge?amount=${encodeURIComponent(amount)}`, { method: "POST" }, (upstream) => {
    let body = "";
    upstream.setEncoding("utf8");
    upstream.on("data", (chunk) => (body += chunk));
    upstream.on("end", () => {
      res.writeHead(upstream.statusCode === 200 ? 200 : 502, { "content-type": "application/json" });
      res.end(JSON.stringify({ order: "accepted", amount: Number(amount), paymentStatus: upstream.statusCode, payment: safeJSON(body) }) + "\n");
    });
  });
  call.on("error", (err) => {
    res.writeHead(502, { "content-type": "application/json" });
    res.end(JSON.stringify({ order: "failed", error: String(err) }) + "\n");
  });
  call.end();
}).listen(port, "0.0.0.0", () => console.log(`orders listening on ${port}, payments at ${payments}`));

function safeJSON(text) {
  try { return JSON.parse(text); } catch { return text.trim(); }
}
