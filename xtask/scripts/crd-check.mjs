// Validates custom resources (prometheus-operator's PodMonitor,
// PrometheusRule, ...) against the schemas that @kubernetes-models generates
// from prometheus-operator's own CRDs. kubernetes-validate knows only the
// built-in kinds and passes these with a warning, unchecked.
//
// usage: node crd-check.mjs MODULES_DIR FILE.yaml...
// MODULES_DIR is the node_modules `cargo xtask setup` installed. Exit 0 if
// every document validates, 1 if any fails or has a kind no schema covers.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
if (!modules || files.length === 0) {
  console.error("usage: node crd-check.mjs MODULES_DIR FILE.yaml...");
  process.exit(2);
}
const load = (rel) => import(pathToFileURL(join(modules, rel)).href);
const { parseAllDocuments } = await load("yaml/dist/index.js");

// apiVersion -> the module of that group/version's kinds.
const GROUPS = {
  "monitoring.coreos.com/v1":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js",
};

let failed = 0;
for (const file of files) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const [i, doc] of docs.entries()) {
    const where = `${file} (document ${i + 1})`;
    if (doc.errors.length > 0) {
      failed++;
      console.log(`FAIL ${where}: YAML: ${doc.errors[0].message}`);
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    const group = GROUPS[obj.apiVersion];
    const Kind = group && (await load(group))[obj.kind];
    if (!Kind) {
      failed++;
      console.log(`FAIL ${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
      continue;
    }
    try {
      new Kind(obj).validate();
      console.log(`ok   ${where}: ${obj.kind} ${obj.metadata?.name ?? ""}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${where}: ${obj.kind}: ${e.message}`);
    }
  }
}
process.exit(failed > 0 ? 1 : 0);
