// Power configuration: the server's power section and the agent's driver, every problem reported at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadAgentPower, loadPowerOptions } from './power-config.ts';
import { magicPacket, parseMac } from '../core/power.ts';

void test('the server power section: pools, schedules, wake commands, durations', () => {
  const problems: string[] = [];
  const o = loadPowerOptions(
    {
      wakeCommand: 'ipmitool chassis power on',
      wakeTimeout: '2m',
      wakeAttempts: 2,
      tick: '500ms',
      pools: [{ name: 'arm', arch: 'arm64', sleepAfter: '20m', minAwake: 1, schedules: [{ days: 'mon-fri', from: '08:00', to: '19:00', timeZone: 'Europe/Berlin', minAwake: 'all' }] }, { name: 'rest' }],
    },
    { KILN_POWER_STATUS_COMMAND: 'ipmitool chassis power status' },
    problems,
  );
  assert.deepEqual(problems, []);
  assert.equal(o.wakeCommand, 'ipmitool chassis power on');
  assert.equal(o.statusCommand, 'ipmitool chassis power status');
  assert.equal(o.tickMs, 500);
  assert.equal(o.policy.wakeTimeoutMs, 120_000);
  assert.equal(o.policy.wakeAttempts, 2);
  const [arm, rest] = o.policy.pools;
  assert.deepEqual(arm!.match, { arch: 'arm64' });
  assert.equal(arm!.idleAfterMs, 20 * 60_000);
  assert.equal(arm!.schedules[0]!.minAwake, Infinity);
  assert.deepEqual(arm!.schedules[0]!.days, ['mon', 'tue', 'wed', 'thu', 'fri']);
  assert.equal(rest!.idleAfterMs, undefined, 'a pool without sleepAfter never sleeps');
});

void test('bad power configuration: every problem at once, each saying what to fix', () => {
  const problems: string[] = [];
  loadPowerOptions(
    { wakeAttempts: 0, wakeTimeout: 'soon', pools: [{ arch: 'sparc', minAwake: -1, schedules: [{ days: 'someday', from: '08:00', to: '19:00' }, { days: 'mon', from: '8', to: '9', timeZone: 'Mars/Olympus' }] }] },
    {},
    problems,
  );
  assert.equal(problems.length, 6, problems.join('\n'));
  assert.ok(problems.some((p) => /wakeAttempts/.test(p)));
  assert.ok(problems.some((p) => /power.wakeTimeout "soon" is not a duration/.test(p)));
  assert.ok(problems.some((p) => /power.pools\[0\]: .*sparc/.test(p)));
  assert.ok(problems.some((p) => /minAwake must be a whole number/.test(p)));
  assert.ok(problems.some((p) => /schedules\[0\].*"someday" is not a day/.test(p)));
  assert.ok(problems.some((p) => /schedules\[1\].*(time of day|time zone)/.test(p)));
});

void test('the agent power driver: flags over env over file; a driver without a sleep command is refused', () => {
  const problems: string[] = [];
  assert.equal(loadAgentPower({}, {}, undefined, problems), undefined);
  const o = loadAgentPower({ powerSleepCommand: 'systemctl suspend' }, { KILN_POWER_DRIVER: 'wol' }, { driver: 'command', mac: 'aa:bb:cc:dd:ee:ff', settle: '0s' }, problems);
  assert.deepEqual(problems, []);
  assert.deepEqual([o?.driver, o?.sleepCommand, o?.settleMs, o?.mac], ['wol', 'systemctl suspend', 0, 'aa:bb:cc:dd:ee:ff']);
  const bad: string[] = [];
  loadAgentPower({}, {}, { driver: 'command', mac: 'nope' }, bad);
  assert.equal(bad.length, 2, bad.join('\n'));
  assert.ok(bad.some((p) => /needs a sleep command/.test(p)));
  assert.ok(bad.some((p) => /"nope" is not a MAC address/.test(p)));
  const worse: string[] = [];
  loadAgentPower({ powerDriver: 'ipmi' }, {}, undefined, worse);
  assert.match(worse[0]!, /power driver "ipmi" is not one of none, command, wol/);
});

void test('the Wake-on-LAN magic packet: six 0xff then the MAC sixteen times', () => {
  const p = magicPacket('01-23-45-67-89-AB');
  assert.equal(p.length, 102);
  assert.ok(p.subarray(0, 6).equals(Buffer.alloc(6, 0xff)));
  for (let i = 0; i < 16; i++) assert.ok(p.subarray(6 + 6 * i, 12 + 6 * i).equals(parseMac('01:23:45:67:89:ab')));
});
