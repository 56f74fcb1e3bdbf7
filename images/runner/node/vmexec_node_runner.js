'use strict';
// vmexec's Node.js runner, shipped in the Node.js SDK shard:
//
//     node /usr/share/vmexec/vmexec_node_runner.js < {"source", "filename"}
//
// The request is one JSON line on stdin. The code runs in a child node
// process whose stdout and stderr are pipes this process reads, so that
// everything it (and what it starts) writes is caught, and passed on as the
// Python runner's records (docs/DESIGN.md, "Python jobs"):
//
//     {"type": "stdout", "data": BASE64}   {"type": "stderr", "data": BASE64}
//     {"type": "result", "value": VALUE|null, "error": ERROR|null}   last
//
// VALUE = {"repr": util.inspect(value), "json": JSON text if it serialises}
// of the script's completion value (the last expression statement's, as the
// REPL shows it; a promise is awaited), once the event loop has drained.
// ERROR = {"type", "message", "traceback": the code's frames only}. The exit
// status is 0, 1 when the code threw, or the code's own process.exit(N).

const childProcess = require('child_process');
const fs = require('fs');
const util = require('util');
const vm = require('vm');

function send(record) {
  fs.writeSync(1, JSON.stringify(record) + '\n');
}

function describeValue(value) {
  if (value === undefined || value === null) return null;
  const described = { repr: util.inspect(value, { depth: 4, breakLength: Infinity }) };
  try {
    const json = JSON.stringify(value);
    if (typeof json === 'string') described.json = json;
  } catch (_) {
    // a cycle, a BigInt: repr only
  }
  return described;
}

function describeError(error, filename) {
  if (!(error instanceof Error)) {
    return { type: 'Error', message: 'thrown: ' + util.inspect(error), traceback: '' };
  }
  const lines = String(error.stack || '').split('\n');
  const frames = lines.filter((line) => line.trimStart().startsWith('at ') && line.includes(filename));
  const head = `${error.name}: ${error.message}`;
  // A syntax error's stack starts with where it is: the file, the line, the caret.
  const where = error instanceof SyntaxError ? lines.slice(0, 3).join('\n') + '\n' : '';
  return { type: error.name || 'Error', message: error.message, traceback: where + [head, ...frames].join('\n') + '\n' };
}

function readRequest(then) {
  let input = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    input += chunk;
    const end = input.indexOf('\n');
    if (end >= 0) {
      process.stdin.destroy();
      then(JSON.parse(input.slice(0, end)));
    }
  });
  process.stdin.on('end', () => {
    if (input.indexOf('\n') < 0) then(input.trim() ? JSON.parse(input) : null);
  });
}

// The child: runs the code, reports its completion value once the loop drained.
function child() {
  process.once('message', async (request) => {
    process.channel.unref(); // the code's own work decides when the loop drains
    const filename = request.filename || '<code>';
    let result = { value: null, error: null };
    let status = 0;
    const report = () => {
      process.send(result, () => process.exit(status));
    };
    process.on('uncaughtException', (error) => {
      result = { value: null, error: describeError(error, filename) };
      status = 1;
      report();
    });
    globalThis.require = require;
    try {
      let value = vm.runInThisContext(request.source, { filename });
      if (value && typeof value.then === 'function') value = await value;
      result = { value: describeValue(value), error: null };
    } catch (error) {
      result = { value: null, error: describeError(error, filename) };
      status = 1;
      report();
      return;
    }
    process.once('beforeExit', report);
  });
}

function parent() {
  readRequest((request) => {
    if (!request || typeof request.source !== 'string') {
      send({ type: 'result', value: null, error: { type: 'Error', message: 'a bad request: no source text', traceback: '' } });
      process.exit(1);
    }
    const code = childProcess.spawn(process.execPath, [__filename, '--child'], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    let result = null;
    code.on('message', (message) => {
      result = message;
    });
    code.stdout.on('data', (data) => send({ type: 'stdout', data: data.toString('base64') }));
    code.stderr.on('data', (data) => send({ type: 'stderr', data: data.toString('base64') }));
    code.send(request);
    // 'close': the child ended and its pipes are drained, so the result comes after all output.
    code.on('close', (exitCode, signal) => {
      if (result === null) {
        const message = signal ? `killed by ${signal}` : `process.exit(${exitCode})`;
        result = exitCode === 0 ? { value: null, error: null } : { value: null, error: { type: 'Exit', message, traceback: '' } };
      }
      send({ type: 'result', value: result.value, error: result.error });
      if (signal) process.kill(process.pid, signal);
      process.exit(exitCode === null ? 1 : exitCode || (result.error ? 1 : 0));
    });
  });
}

if (process.argv[2] === '--child') child();
else parent();
