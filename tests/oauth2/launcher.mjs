// Test-only OAuth2 server for mailhaul's tests: npm's oauth2-mock-server (RS256 JWTs, JWKS,
// client_credentials) with the client registry it lacks, plus a jwt-bearer endpoint for
// Google service-account assertions (which oauth2-mock-server refuses).
//
// Usage: node launcher.mjs CONFIG.json   (MAILHAUL_OAUTH2_MOCK_DIR: where the package is installed)
// CONFIG: {
//   "log": "/path/requests.jsonl",            one JSON line per token request (never a token)
//   "clients": { "<client_id>": { "secret": "...", "email": "alice", "jwt_ttl": 3600,
//                "expires_in": 3600, "certificate_pem": "..." (client assertions instead) } },
//   "google": { "client_email": "...", "public_key_pem": "...", "jwt_ttl": 3600 }
// }
// Prints one line: {"port", "issuer", "kid", "public_key_pem"}; runs until killed.
import { createServer } from "node:http";
import { appendFileSync, readFileSync } from "node:fs";
import { createHash, createPublicKey, verify, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const dir = process.env.MAILHAUL_OAUTH2_MOCK_DIR;
const { OAuth2Server } = await import(
  pathToFileURL(join(dir, "node_modules", "oauth2-mock-server", "dist", "index.mjs")).href
);

const log = (entry) => appendFileSync(config.log, JSON.stringify({ at: Date.now() / 1000, ...entry }) + "\n");
const b64url = (text) => Buffer.from(text, "base64url");
const now = () => Math.floor(Date.now() / 1000);

/** Verifies an RS256 JWT with `publicKey`; returns [header, claims] or throws with the reason. */
function verifyJwt(jwt, publicKey) {
  const parts = String(jwt ?? "").split(".");
  if (parts.length !== 3) throw new Error("not a JWT");
  const header = JSON.parse(b64url(parts[0]).toString());
  const claims = JSON.parse(b64url(parts[1]).toString());
  if (header.alg !== "RS256") throw new Error(`alg ${header.alg}, not RS256`);
  const ok = verify("RSA-SHA256", Buffer.from(`${parts[0]}.${parts[1]}`), publicKey, b64url(parts[2]));
  if (!ok) throw new Error("bad signature");
  return [header, claims];
}

function clientOf(req) {
  const auth = req.headers.authorization ?? "";
  if (auth.startsWith("Basic ")) {
    const [id, secret] = Buffer.from(auth.slice(6), "base64").toString().split(":");
    return { id: decodeURIComponent(id), secret: decodeURIComponent(secret ?? "") };
  }
  return { id: req.body?.client_id, secret: req.body?.client_secret };
}

const server = new OAuth2Server();
const key = await server.issuer.keys.generate("RS256");
const publicKeyPem = createPublicKey({ key, format: "jwk" }).export({ type: "spki", format: "pem" });
let tokenUrl = "";

// Who the client is, checked before the response goes out.
server.service.on("beforeResponse", (response, req) => {
  const { id, secret } = clientOf(req);
  const client = config.clients?.[id];
  let refusal = null;
  if (!client) {
    refusal = ["invalid_client", `Application with identifier '${id}' was not found.`];
  } else if (client.certificate_pem) {
    try {
      if (req.body.client_assertion_type !== "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
        throw new Error("no client assertion");
      }
      const cert = new X509Certificate(client.certificate_pem);
      const [header, claims] = verifyJwt(req.body.client_assertion, cert.publicKey);
      const thumbprint = createHash("sha256").update(cert.raw).digest("base64url");
      if (header["x5t#S256"] !== thumbprint) throw new Error("x5t#S256 is not the certificate's thumbprint");
      if (claims.iss !== id || claims.sub !== id) throw new Error("iss/sub is not the client id");
      if (claims.aud !== tokenUrl) throw new Error(`aud ${claims.aud} is not ${tokenUrl}`);
      if (!(claims.exp > now())) throw new Error("assertion expired");
    } catch (e) {
      refusal = ["invalid_client", `AADSTS700027: Client assertion failed signature validation: ${e.message}`];
    }
  } else if (client.secret !== secret) {
    refusal = ["invalid_client", "AADSTS7000215: Invalid client secret provided."];
  }
  log({ grant: req.body.grant_type, client_id: id, scope: req.body.scope, status: refusal ? 401 : 200 });
  if (refusal) {
    response.statusCode = 401;
    response.body = { error: refusal[0], error_description: refusal[1] };
  } else if (client.expires_in !== undefined) {
    response.body.expires_in = client.expires_in;
  }
});

// Each client's tokens name its mailbox (Dovecot's username_attribute) and live jwt_ttl.
server.service.on("beforeTokenSigning", (token, req) => {
  const client = config.clients?.[clientOf(req).id];
  if (!client) return;
  token.payload.sub = client.email;
  token.payload.email = client.email;
  token.payload.exp = token.payload.iat + (client.jwt_ttl ?? 3600);
});

// jwt-bearer (RFC 7523) as Google serves it for service accounts with domain-wide delegation.
async function google(req, res) {
  let body = "";
  for await (const chunk of req) body += chunk;
  const form = new URLSearchParams(body);
  const answer = (status, json) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(json));
  };
  const g = config.google ?? {};
  let header, claims;
  try {
    if (form.get("grant_type") !== "urn:ietf:params:oauth:grant-type:jwt-bearer") throw new Error("grant_type");
    [header, claims] = verifyJwt(form.get("assertion"), createPublicKey(g.public_key_pem));
    const iat = Number(claims.iat), exp = Number(claims.exp);
    if (claims.iss !== g.client_email) throw new Error(`iss ${claims.iss}`);
    if (claims.aud !== `${tokenUrl.replace(/\/token$/, "")}/google/token`) throw new Error(`aud ${claims.aud}`);
    if (claims.scope !== "https://mail.google.com/") throw new Error(`scope ${claims.scope}`);
    if (!claims.sub) throw new Error("no sub");
    if (!(exp > now() && exp - iat <= 3600 && iat <= now() + 60)) throw new Error(`iat ${iat} exp ${exp}`);
  } catch (e) {
    log({ grant: "jwt-bearer", status: 400, reason: e.message });
    return answer(400, { error: "invalid_grant", error_description: `Invalid JWT: ${e.message}` });
  }
  const ttl = g.jwt_ttl ?? 3600;
  const accessToken = await server.issuer.buildToken({
    scopesOrTransform: (_h, payload) => {
      Object.assign(payload, { sub: claims.sub, email: claims.sub, scope: claims.scope });
      payload.exp = payload.iat + ttl;
    },
    expiresIn: ttl,
  });
  log({
    grant: "jwt-bearer",
    status: 200,
    kid: header.kid ?? null,
    iss: claims.iss,
    sub: claims.sub,
    scope: claims.scope,
    aud: claims.aud,
    iat: claims.iat,
    exp: claims.exp,
  });
  answer(200, { access_token: accessToken, token_type: "Bearer", expires_in: ttl });
}

const handler = server.service.requestHandler;
const http = createServer((req, res) => {
  if (req.method === "POST" && req.url.startsWith("/google/token")) {
    google(req, res).catch((e) => answer500(res, e));
  } else {
    handler(req, res);
  }
});
function answer500(res, e) {
  res.writeHead(500);
  res.end(String(e));
}
http.listen(0, "127.0.0.1", () => {
  const port = http.address().port;
  server.issuer.url = `http://127.0.0.1:${port}`;
  tokenUrl = `http://127.0.0.1:${port}/token`;
  process.stdout.write(
    JSON.stringify({ port, issuer: server.issuer.url, kid: key.kid, public_key_pem: publicKeyPem }) + "\n",
  );
});
