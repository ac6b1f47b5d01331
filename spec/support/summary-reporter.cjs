// Mocha's spec reporter, plus one plain closing line ("N passed, N failed, N skipped") that any CI
// log reader understands, and the wall time of the slowest top-level suites (hooks included: a
// cluster's start and stop are most of an integration suite's time), to keep the suite in its budget.
'use strict';
const Mocha = require('mocha');

const SLOWEST_SHOWN = 12;

class SummaryReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    const started = new Map();
    const took = [];
    runner.on(Mocha.Runner.constants.EVENT_SUITE_BEGIN, (suite) => {
      if (suite.parent && suite.parent.root) started.set(suite, Date.now());
    });
    runner.on(Mocha.Runner.constants.EVENT_SUITE_END, (suite) => {
      const from = started.get(suite);
      if (from !== undefined) took.push({ title: suite.title, ms: Date.now() - from });
    });
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const { passes, failures, pending } = runner.stats;
      const slowest = took.sort((a, b) => b.ms - a.ms).slice(0, SLOWEST_SHOWN);
      process.stdout.write(`\nslowest suites (wall time, hooks included):\n`);
      for (const { title, ms } of slowest) process.stdout.write(`  ${(ms / 1000).toFixed(1).padStart(6)} s  ${title}\n`);
      process.stdout.write(`\n${passes} passed, ${failures} failed, ${pending} skipped\n`);
    });
  }
}

module.exports = SummaryReporter;
