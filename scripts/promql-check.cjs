// Parses PromQL expressions with Prometheus' own grammar (@prometheus-io/lezer-promql,
// the one its web UI uses). Input on stdin: JSON [[name, expression], ...].
// Prints one line per expression that does not parse; exits 1 if any.
// Run by scripts/validate_k8s.py with NODE_PATH pointing at the installed package.
const { parser } = require('@prometheus-io/lezer-promql');

const expressions = JSON.parse(require('fs').readFileSync(0, 'utf8'));
let failed = 0;
for (const [name, expression] of expressions) {
  const errors = [];
  parser.parse(expression).iterate({
    enter: (node) => {
      if (node.type.isError) errors.push(node.from);
    },
  });
  if (errors.length > 0) {
    failed += 1;
    const at = errors[0];
    console.log(`${name}: syntax error at offset ${at}: …${expression.slice(Math.max(0, at - 30), at + 10)}…`);
  }
}
process.exit(failed > 0 ? 1 : 0);
