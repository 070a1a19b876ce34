import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KvmUnavailableError, SystemCallError } from '../errors.js';
import { EACCES, EINVAL, ENOENT, ENXIO } from '../sys/libc.js';
import { KvmSystem, explainOpenFailure, probeKvm } from './system.js';

test('a missing device: KvmUnavailableError saying what to do', () => {
  assert.throws(() => KvmSystem.open('/nonexistent/kvm'), (err: unknown) => {
    assert.ok(err instanceof KvmUnavailableError);
    assert.equal(err.code, 'FERRY_ERR_KVM_UNAVAILABLE');
    assert.match(err.message, /\/nonexistent\/kvm does not exist/);
    assert.match(err.message, /--accel sim/);
    assert.ok(err.cause instanceof SystemCallError);
    assert.equal(err.message.split('\n').length, 1, 'one line');
    return true;
  });
});

test('a file that is not KVM: names the failed ioctl', () => {
  assert.throws(() => KvmSystem.open('/dev/null'), (err: unknown) => {
    assert.ok(err instanceof KvmUnavailableError);
    assert.match(err.message, /\/dev\/null is not a KVM device \(KVM_GET_API_VERSION failed/);
    return true;
  });
});

test('open failures by errno: permission, no module, other', () => {
  const denied = explainOpenFailure('/dev/kvm', new SystemCallError('open', EACCES, 'open failed'));
  assert.match(denied.message, /Permission denied opening \/dev\/kvm: add your user to the "kvm" group/);
  assert.match(explainOpenFailure('/dev/kvm', new SystemCallError('open', ENOENT, 'x')).message, /does not exist: this host has no KVM/);
  assert.match(explainOpenFailure('/dev/kvm', new SystemCallError('open', ENXIO, 'x')).message, /no KVM module is behind it/);
  assert.match(explainOpenFailure('/dev/kvm', new SystemCallError('open', EINVAL, 'weird')).message, /Cannot open \/dev\/kvm: weird/);
});

test('probeKvm agrees with KvmSystem.open on this host', (t) => {
  const probe = probeKvm();
  let opened = false;
  try {
    KvmSystem.open().close();
    opened = true;
  } catch (err) {
    assert.ok(err instanceof KvmUnavailableError);
    assert.deepEqual(probe, { ok: false, reason: err.message });
  }
  if (opened) {
    assert.deepEqual(probe, { ok: true });
  } else {
    t.diagnostic(`no KVM here: ${probe.ok ? '' : probe.reason}`);
  }
});
