// HMP command lines as QEMU 7.2 parses them, against a stand-in for the QMP commands
// behind them: which QMP command each line runs and with what arguments, the values'
// types and suffixes, and the text of every kind of error. (test/hmp-qemu.test.ts puts
// the same lines to QEMU 7.2 and to a Ferry VM and compares the answers.)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrationError } from '../errors.js';
import { DEFAULT_MIGRATION_PARAMETERS } from '../migration/parameters.js';
import { formatMigrateParameters, parseParameterValue, runHmp } from './hmp.js';

/** A context that records each QMP call and answers from `answers` (or throws what is there). */
function recorder(answers: Record<string, unknown> = {}) {
  const calls: Array<[string, Record<string, unknown> | undefined]> = [];
  return {
    calls,
    ctx: {
      qmp: async (name: string, args?: Record<string, unknown>) => {
        calls.push([name, args]);
        const answer = answers[name];
        if (answer instanceof Error) throw answer;
        return answer ?? {};
      },
    },
  };
}

test('hmp: each command runs its QMP command with the arguments QEMU would pass', async () => {
  const cases: Array<[string, string, Record<string, unknown> | undefined]> = [
    ['migrate -d tcp:127.0.0.1:4444', 'migrate', { uri: 'tcp:127.0.0.1:4444', detach: true, blk: false, inc: false, resume: false }],
    ['migrate "exec:cat > /tmp/a \\"b\\""', 'migrate', { uri: 'exec:cat > /tmp/a "b"', detach: false, blk: false, inc: false, resume: false }],
    ['migrate -dr unix:/x', 'migrate', { uri: 'unix:/x', detach: true, blk: false, inc: false, resume: true }],
    ['migrate_cancel', 'migrate_cancel', undefined],
    ['migrate_continue pre-switchover', 'migrate-continue', { state: 'pre-switchover' }],
    ['migrate_start_postcopy', 'migrate-start-postcopy', undefined],
    ['migrate_recover tcp:127.0.0.1:4445', 'migrate-recover', { uri: 'tcp:127.0.0.1:4445' }],
    ['migrate_pause', 'migrate-pause', undefined],
    ['migrate_incoming unix:/tmp/m.sock', 'migrate-incoming', { uri: 'unix:/tmp/m.sock' }],
    ['migrate_set_capability xbzrle on', 'migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] }],
    ['migrate_set_capability events off', 'migrate-set-capabilities', { capabilities: [{ capability: 'events', state: false }] }],
    ['migrate_set_parameter downtime-limit 100', 'migrate-set-parameters', { 'downtime-limit': 100 }],
    ['migrate_set_parameter max-bandwidth 100', 'migrate-set-parameters', { 'max-bandwidth': 100 * 2 ** 20 }],
    ['migrate_set_parameter tls-creds tls0', 'migrate-set-parameters', { 'tls-creds': 'tls0' }],
    ['object_add tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server,verify-peer=off', 'object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: '/etc/pki/qemu', endpoint: 'server', 'verify-peer': false }],
    ['object_add qom-type=tls-creds-x509,id=t,dir=/d,sanity-check=on', 'object-add', { 'qom-type': 'tls-creds-x509', id: 't', dir: '/d', 'sanity-check': true }],
    ['object_add memory-backend-file,id=m,size=64M,mem-path=/dev/shm/x,share=on', 'object-add', { 'qom-type': 'memory-backend-file', id: 'm', size: 64 * 1024 * 1024, 'mem-path': '/dev/shm/x', share: true }],
    ['object_del tls0', 'object-del', { id: 'tls0' }],
    ['stop', 'stop', undefined],
    ['  cont  ', 'cont', undefined],
    ['c', 'cont', undefined],
    ['q', 'quit', undefined],
    ['calc_dirty_rate 2', 'calc-dirty-rate', { 'calc-time': 2 }],
    ['calc_dirty_rate 1 1024', 'calc-dirty-rate', { 'calc-time': 1, 'sample-pages': 1024 }],
    ['calc_dirty_rate -b 0x3', 'calc-dirty-rate', { 'calc-time': 3, mode: 'dirty-bitmap' }],
    ['calc_dirty_rate -r 1', 'calc-dirty-rate', { 'calc-time': 1, mode: 'dirty-ring' }],
  ];
  for (const [line, name, args] of cases) {
    const { calls, ctx } = recorder();
    await runHmp(line, ctx);
    assert.deepEqual(calls, [[name, args]], line);
  }
});

test('hmp: migrate without -d says it goes on detached, as QEMU says over QMP', async () => {
  const { ctx } = recorder();
  assert.equal(await runHmp('migrate exec:true', ctx), 'terminal does not allow synchronous migration, continuing detached\n');
  assert.equal(await runHmp('migrate -d exec:true', ctx), '');
});

test('hmp: sizes take binary suffixes; max-bandwidth counts bare numbers in MiB', () => {
  assert.equal(parseParameterValue('xbzrle-cache-size', '32M'), 32 * 2 ** 20);
  assert.equal(parseParameterValue('xbzrle-cache-size', '1.5G'), 1.5 * 2 ** 30);
  assert.equal(parseParameterValue('announce-initial', '1k'), 1024);
  assert.throws(() => parseParameterValue('downtime-limit', '-5'), /expects a non-negative number/);
  assert.throws(() => parseParameterValue('xbzrle-cache-size', '4Q'), /expects a non-negative number/);
  assert.equal(parseParameterValue('max-bandwidth', '10'), 10 * 2 ** 20);
  assert.equal(parseParameterValue('max-bandwidth', '10k'), 10 * 1024);
  assert.equal(parseParameterValue('xbzrle-cache-size', '4096'), 4096);
  assert.equal(parseParameterValue('downtime-limit', '1k'), 1024);
  assert.equal(parseParameterValue('cpu-throttle-initial', '30'), 30);
  assert.equal(parseParameterValue('x-checkpoint-delay', '4000000000'), 4000000000);
  assert.equal(parseParameterValue('compress-wait-thread', 'yes'), true);
  assert.equal(parseParameterValue('block-incremental', 'off'), false);
  assert.equal(parseParameterValue('multifd-compression', 'zstd'), 'zstd');
});

test('hmp: bad values and bad lines get QEMU\'s words, and run nothing', async () => {
  const cases: Array<[string, string]> = [
    ['migrate_set_parameter downtime-limit abc', "Error: Parameter 'downtime-limit' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n"],
    ['migrate_set_parameter cpu-throttle-initial abc', "Error: Parameter 'cpu-throttle-initial' expects uint64\n"],
    ['migrate_set_parameter cpu-throttle-initial 300', "Error: Parameter 'cpu-throttle-initial' expects uint8_t\n"],
    ['migrate_set_parameter x-checkpoint-delay 5000000000', "Error: Parameter 'x-checkpoint-delay' expects uint32_t\n"],
    ['migrate_set_parameter max-bandwidth abc', 'Error: Invalid size abc\n'],
    ['migrate_set_parameter compress-wait-thread maybe', "Error: Parameter 'compress-wait-thread' expects 'on' or 'off'\n"],
    ['migrate_set_parameter bogus 1', 'Error: invalid parameter value: bogus\n'],
    ['object_add tls-creds-x509,id=t,dir=/d,verify-peer=maybe', "Error: Parameter 'verify-peer' expects 'on' or 'off'\n"],
    ['object_add memory-backend-ram,id=m,size=lots', "Error: Parameter 'size' expects a size value\n"],
    ['object_add tls-creds-x509,dir=/d', 'Error: Invalid -object "tls-creds-x509,dir=/d": Parameter \'id\' is missing\n'],
    ['migrate_set_parameter block-bitmap-mapping x', 'Error: The block-bitmap-mapping parameter can only be set through QMP\n'],
    ['migrate_set_parameter downtime-limit', 'migrate_set_parameter: string expected\nTry "help migrate_set_parameter" for more information\n'],
    ['migrate_set_parameter downtime-limit 1 2', 'migrate_set_parameter: extraneous characters at the end of line\nTry "help migrate_set_parameter" for more information\n'],
    ['migrate_set_capability xbzrle maybe', 'Expected \'on\' or \'off\'\nTry "help migrate_set_capability" for more information\n'],
    ['migrate_set_capability xbzrle', 'Expected \'on\' or \'off\'\nTry "help migrate_set_capability" for more information\n'],
    ['migrate_set_capability', 'migrate_set_capability: string expected\nTry "help migrate_set_capability" for more information\n'],
    ['migrate', 'migrate: string expected\nTry "help migrate" for more information\n'],
    ['migrate -x exec:true', 'migrate: unsupported option -x\nTry "help migrate" for more information\n'],
    ['migrate "exec:cat', 'migrate: unterminated string\nTry "help migrate" for more information\n'],
    ['migrate_cancel now', 'migrate_cancel: extraneous characters at the end of line\nTry "help migrate_cancel" for more information\n'],
    ['info status now', 'info: extraneous characters at the end of line\nTry "help info" for more information\n'],
    ['calc_dirty_rate', 'unexpected end of expression\nTry "help calc_dirty_rate" for more information\n'],
    ['calc_dirty_rate x', 'invalid char \'x\' in expression\nTry "help calc_dirty_rate" for more information\n'],
    ['calc_dirty_rate 1 12a', 'invalid char \'a\' in expression\nTry "help calc_dirty_rate" for more information\n'],
    ['calc_dirty_rate 0', 'Incorrect period length specified!\n'],
    ['calc_dirty_rate -r -b 1', 'Either dirty ring or dirty bitmap can be specified!\n'],
    ['bogus', "unknown command: 'bogus'\n"],
    ['info bogus', "unknown command: 'info bogus'\n"],
  ];
  for (const [line, expected] of cases) {
    const { calls, ctx } = recorder();
    assert.equal(await runHmp(line, ctx), expected, line);
    assert.deepEqual(calls, [], `${line} ran ${JSON.stringify(calls)}`);
  }
});

test('hmp: a QMP command\'s error is the text "Error: …"; an unknown capability is worded as QEMU\'s HMP words it', async () => {
  const failing = recorder({ 'migrate-continue': new MigrationError('Migration not in expected state: none') });
  assert.equal(await runHmp('migrate_continue pre-switchover', failing.ctx), 'Error: Migration not in expected state: none\n');
  const enumError = recorder({ 'migrate-set-capabilities': new MigrationError("Parameter 'capabilities[0].capability' does not accept value 'bogus'") });
  assert.equal(await runHmp('migrate_set_capability bogus on', enumError.ctx), 'Error: invalid parameter value: bogus\n');
});

test('hmp: info status names any stopped state but plain paused; info commands read the QMP queries', async () => {
  const status = async (answer: unknown) => runHmp('info status', recorder({ 'query-status': answer }).ctx);
  assert.equal(await status({ status: 'running', running: true }), 'VM status: running\n');
  assert.equal(await status({ status: 'paused', running: false }), 'VM status: paused\n');
  assert.equal(await status({ status: 'postmigrate', running: false }), 'VM status: paused (postmigrate)\n');
  assert.equal(await status({ status: 'inmigrate', running: false }), 'VM status: paused (inmigrate)\n');

  const caps = recorder({ 'query-migrate-capabilities': [{ capability: 'xbzrle', state: true }, { capability: 'events', state: false }] });
  assert.equal(await runHmp('info migrate_capabilities', caps.ctx), 'xbzrle: on\nevents: off\n');
  const params = recorder({ 'query-migrate-parameters': { ...DEFAULT_MIGRATION_PARAMETERS } });
  assert.equal(await runHmp('info migrate_parameters', params.ctx), formatMigrateParameters({ ...DEFAULT_MIGRATION_PARAMETERS }));
  const info = await runHmp('info migrate', recorder({ 'query-migrate': { status: 'completed', 'total-time': 5, downtime: 1 } }).ctx);
  assert.match(info, /^Migration status: completed$/m);
});

test('hmp: calc_dirty_rate says where to look; info dirty_rate prints query-dirty-rate as QEMU does', async () => {
  const { ctx } = recorder();
  assert.equal(await runHmp('calc_dirty_rate 1', ctx), "Starting dirty rate measurement with period 1 seconds\n[Please use 'info dirty_rate' to check results]\n");
  const show = async (answer: unknown) => runHmp('info dirty_rate', recorder({ 'query-dirty-rate': answer }).ctx);
  assert.equal(
    await show({ status: 'unstarted', 'start-time': 0, 'calc-time': 0, 'sample-pages': 0, mode: 'page-sampling' }),
    'Status: unstarted\nStart Time: 0 (ms)\nSample Pages: 0 (per GB)\nPeriod: 0 (sec)\nMode: page-sampling\nDirty rate: (not ready)\n',
  );
  assert.equal(
    await show({ status: 'measured', 'dirty-rate': 31, 'start-time': 18400, 'calc-time': 1, 'sample-pages': 0, mode: 'dirty-bitmap' }),
    'Status: measured\nStart Time: 18400 (ms)\nPeriod: 1 (sec)\nMode: dirty-bitmap\nDirty rate: 31 (MB/s)\n',
  );
});

test('hmp: info name, uuid and version print the QMP queries as QEMU does', async () => {
  const ctx = recorder({ 'query-name': { name: 'vm1' }, 'query-uuid': { UUID: '6f1c4c2e-0b6a-4d52-9d2c-4b1f3e9a7c10' }, 'query-version': { qemu: { major: 7, minor: 2, micro: 0 }, package: ' (ferry 0.1.0)' } }).ctx;
  assert.equal(await runHmp('info name', ctx), 'vm1\n');
  assert.equal(await runHmp('info name', recorder({ 'query-name': {} }).ctx), '');
  assert.equal(await runHmp('info uuid', ctx), '6f1c4c2e-0b6a-4d52-9d2c-4b1f3e9a7c10\n');
  assert.equal(await runHmp('info version', ctx), '7.2.0 (ferry 0.1.0)\n');
});

test('hmp: help lists what this monitor understands; help of one command is its line', async () => {
  const { ctx } = recorder();
  const all = await runHmp('help', ctx);
  for (const name of ['calc_dirty_rate', 'migrate ', 'migrate_cancel', 'migrate_continue', 'migrate_incoming', 'migrate_set_capability', 'migrate_set_parameter', 'stop', 'cont', 'quit', 'info']) {
    assert.match(all, new RegExp(`^${name}`, 'm'), name);
  }
  assert.match(await runHmp('help migrate_set_parameter', ctx), /^migrate_set_parameter parameter value -- /);
  assert.match(await runHmp('help c', ctx), /^cont -- /);
  assert.match(await runHmp('help info', ctx), /^info migrate_parameters -- /m);
  assert.equal(await runHmp('help bogus', ctx), "unknown command: 'bogus'\n");
  assert.equal(await runHmp('info', ctx), await runHmp('help info', ctx));
  assert.equal(await runHmp('   ', ctx), '');
});
