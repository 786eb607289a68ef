"""Every alarm laned can raise, and the registry that raises, debounces and clears them.

The **catalogue** (:data:`CATALOGUE`) holds one :class:`AlarmSpec` per alarm code: its
kind, severity, a Chinese and an English text a field engineer can act on (what is wrong,
what laned did about it, what to check) and a longer ``action``. A code without an entry
is a programming error: :class:`AlarmRegistry` raises :class:`UnknownAlarm` for it rather
than inventing a generic text, because "unknown alarm x" on a screen at 3 a.m. tells
nobody what to do, and an error found by the tests (``tests/test_alarms.py`` reads every
code the lane raises from the source) is better than a useless text found in the field.

Two kinds of alarm:

* a **condition** holds for a while (``rsu_offline``, ``disk_low`` …). Whoever knows
  about it calls :meth:`AlarmRegistry.set` with ``active=True`` or ``False`` — on every
  check, or only on changes: the last state a source reported holds until it reports
  another. The condition is raised once it has held for its *raise debounce* and cleared
  once it has been absent for its *clear debounce*; several sources (the lane machine and
  a health check, two IO backends) may report the same code, and the condition holds
  while any of them says so. A condition that keeps coming and going faster than its
  debounce ("flapping": ``flap_count`` onsets within ``flap_window_s``) is raised anyway,
  and is not cleared while it keeps flapping: one raise and one clear, not a storm.
* an **event** happens at an instant (``follow_car``, ``outcome_unknown``):
  :meth:`AlarmRegistry.event` raises it; the same event again while it is active is
  counted and extends its hold time, without a new raise; it clears when its hold time
  has passed without a new occurrence, or when acknowledged.

Sans-IO: no clock is read. ``now`` is the monotonic time in seconds, ``wall`` the wall
clock (a ``datetime``, as the journal takes it), both passed in by the caller; call
:meth:`AlarmRegistry.tick` periodically (the daemon's health cycle) so that debounce and
hold times expire without a new report.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Severity(enum.StrEnum):
    """How urgent an alarm is, most urgent first."""

    CRITICAL = "critical"  # the lane cannot take ETC, or safety depends on a person now
    MAJOR = "major"  # a function is lost or money needs checking; the lane still runs
    MINOR = "minor"  # a degradation the lane works around
    WARNING = "warning"  # heading for trouble if nobody acts
    INFO = "info"  # for the record

    @property
    def rank(self) -> int:
        """0 for critical … 4 for info: sort by this to show the worst first."""
        return _RANK[self]


_RANK = {s: i for i, s in enumerate(Severity)}


class AlarmKind(enum.StrEnum):
    CONDITION = "condition"  # raised while a condition holds, cleared when it stops
    EVENT = "event"  # raised at an instant, cleared after its hold time or when acknowledged

    @property
    def article(self) -> str:
        return f"an {self}" if self is AlarmKind.EVENT else f"a {self}"


@dataclass(frozen=True, slots=True)
class AlarmSpec:
    """What laned knows about one alarm code before it happens."""

    code: str
    kind: AlarmKind
    severity: Severity
    zh: str  # what is wrong and what to check, for the booth and the centre
    en: str  # the same, for logs and engineers
    action: str  # what to do, step by step (docs/alarms.md, `laned status`)
    raise_after_s: float = 0.0  # condition: must hold this long before it is raised
    clear_after_s: float = 0.0  # condition: must be absent this long before it is cleared
    hold_s: float = 300.0  # event: cleared this long after its last occurrence

    def __post_init__(self) -> None:
        if not self.code or not self.zh or not self.en or not self.action:
            raise ValueError(f"alarm {self.code!r}: code, zh, en and action must all be given")
        if min(self.raise_after_s, self.clear_after_s, self.hold_s) < 0:
            raise ValueError(f"alarm {self.code!r}: debounce and hold times must be ≥ 0")


class UnknownAlarm(KeyError):
    """An alarm code that is not in the catalogue: a programming error (add its texts)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return (f"alarm code {self.code!r} is not in the catalogue: add an AlarmSpec with its "
                f"zh/en texts to laned/health/alarms.py")


_C, _E = AlarmKind.CONDITION, AlarmKind.EVENT
_CRIT, _MAJ, _MIN, _WARN = Severity.CRITICAL, Severity.MAJOR, Severity.MINOR, Severity.WARNING

# Debounce values: long enough that a reconnect with the first back-off step (RsuLink's
# 0.2 s, a Modbus retry) or a single late poll does not raise anything; short enough that
# the booth learns about a real outage within seconds. They are laned's choice, not a
# vendor's; the daemon may override them per code (AlarmRegistry(debounce_s=…)).
_SPECS: tuple[AlarmSpec, ...] = (
    # -- RSU ------------------------------------------------------------------------------------
    AlarmSpec(
        "rsu_offline", _C, _CRIT,
        "RSU通信中断，ETC暂停，请检查RSU电源和串口线",
        "RSU link down: ETC closed. Check the RSU's power and the serial cable/adapter (/dev/laned-rsu).",
        "Check the RSU controller has power and its run LED is lit. Check the serial cable and the "
        "USB-serial adapter (`ls -l /dev/laned-rsu`, `dmesg | tail` for unplug/EIO messages) or, for a "
        "TCP RSU, the network cable and the RSU's IP. The detail has the last link error. laned "
        "reconnects by itself; the alarm clears once the link has been back for a few seconds.",
        raise_after_s=5.0, clear_after_s=5.0),
    AlarmSpec(
        "rsu_not_initialised", _C, _CRIT,
        "RSU已连接但未完成初始化(未收到B0)，无法处理OBU，请检查RSU协议配置或重启RSU",
        "RSU connected but not initialised: no B0 (RSU ready) since the link came up, so no OBU "
        "can be served. Check the RSU profile and baud rate in laned.toml, then power-cycle the RSU.",
        "Compare `rsu.profile` and `rsu.baud` in /etc/laned/laned.toml with the RSU's configuration "
        "(a wrong baud rate gives damaged frames: `laned status` shows the drop counters). If the "
        "settings match, power-cycle the RSU: it sends B0 when it starts. A B0 with a non-zero "
        "status raises rsu_fault instead.",
        raise_after_s=15.0, clear_after_s=0.0),
    AlarmSpec(
        "rsu_silent", _C, _MAJ,
        "RSU长时间无心跳，请检查RSU是否死机及串口线接触",
        "RSU silent: no frame or heartbeat within the limit although the port is open; laned "
        "will reopen the link. Check the RSU is running (restart it) and the serial cable's contacts.",
        "An RSU heartbeats every 3–60 s. Silence with an open port means the RSU hung, lost power "
        "behind a still-powered USB adapter, or the RX wire is loose. Check the RSU's LEDs, restart "
        "it, reseat the serial connectors. The detail gives the age of the last frame.",
        raise_after_s=0.0, clear_after_s=5.0),
    AlarmSpec(
        "rsu_fault", _E, _CRIT,
        "RSU报告故障状态(B0状态非0)，请根据状态码检查PSAM卡和天线，必要时重启RSU",
        "RSU reports a fault in its B0 status (non-zero; the detail has the code and its meaning). "
        "Check the PSAM card(s) and the antenna, then power-cycle the RSU.",
        "Look up the status code in the detail (RSU vendor manual). Typical causes: a PSAM card "
        "missing, not authorised or locked; an antenna (RF) fault. Reseat or replace the PSAM, "
        "check the antenna cable, power-cycle the RSU and watch for a B0 with status 0.",
        hold_s=600.0),
    AlarmSpec(
        "rsu_send_failed", _E, _MAJ,
        "向RSU发送指令失败，请检查串口线和USB转换器",
        "A frame to the RSU could not be written (the detail names the frame and the error). A "
        "charge in flight is recorded as unknown, never repeated. Check the serial cable/adapter.",
        "Check the serial cable and the USB-serial adapter (`dmesg | tail`). If the detail names a "
        "C6 (charge), an outcome_unknown alarm follows: reconcile that transaction.",
        hold_s=300.0),
    # -- IO module, GPIO, barrier ------------------------------------------------------------
    AlarmSpec(
        "io_offline", _C, _CRIT,
        "IO模块通信中断，栏杆无法控制且不会落杆，ETC暂停，请检查IO模块电源和RS-485/网线",
        "IO module not answering: the barrier cannot be moved and is never lowered while it is "
        "away; ETC closed. Check the IO module's power and its RS-485/Ethernet wiring.",
        "Check the DI/DO module's power LED and its bus wiring (RS-485 A/B polarity, termination, "
        "or the Ethernet cable to a Modbus TCP gateway); check slave id and bus settings in "
        "laned.toml against the module. The detail has the last Modbus error. Until it answers, "
        "the interlock counts every presence input as occupied.",
        raise_after_s=2.0, clear_after_s=5.0),
    AlarmSpec(
        "io_readback", _C, _MAJ,
        "IO输出回读与指令不一致，请检查继电器、输出接线及是否有其他主站写入",
        "IO output read-back differs from what laned wrote (the detail names the output): a stuck "
        "relay, a wiring fault or another Modbus master. Check the relay and the output wiring.",
        "Read the named output's state on the module (LED) while laned switches it. A relay that "
        "does not follow is worn or stuck: replace it. A second master on the bus (a PLC, a "
        "commissioning tool) overwrites coils: disconnect it.",
        raise_after_s=1.0, clear_after_s=5.0),
    AlarmSpec(
        "input_stale", _C, _CRIT,
        "车检器(线圈)输入数据过期，栏杆不会落下，请检查IO模块轮询和总线负载",
        "A presence input (the safety loop) is not fresh: its latest sample is older than the "
        "staleness limit, so the arm is not lowered. Check the IO module polling and the bus load.",
        "The IO module answers but the presence input is not refreshed fast enough (it is polled "
        "at ≥ 20 Hz). Check the bus: too many devices or retries on one RS-485 line, a slow baud "
        "rate, a Modbus TCP gateway with long timeouts. `laned status` shows the bus counters.",
        raise_after_s=2.0, clear_after_s=3.0),
    AlarmSpec(
        "gpio_fault", _C, _CRIT,
        "GPIO不可用，栏杆和线圈无法读写，ETC暂停，请检查GPIO接线和laned权限",
        "GPIO pins unavailable: the barrier and loops on the lane PC's GPIO cannot be used; ETC "
        "closed. Check the gpiochip, laned's permission to it, the pin numbers and the wiring.",
        "Check `/dev/gpiochip*` exists and laned's user is in its group, that the GPIO profile's "
        "pin names match the board, and the wiring to the relay board. The detail has the error "
        "from the GPIO library.",
        raise_after_s=2.0, clear_after_s=5.0),
    AlarmSpec(
        "interlock_fault", _C, _CRIT,
        "栏杆联锁故障锁定：线圈输入未知/过期/抖动/不一致，栏杆保持抬起，请检查安全线圈和车检器",
        "Barrier interlock fault latched: a presence input was unknown, stale, chattering or "
        "disagreeing (the detail says which), so the arm is held up and never lowered. It releases "
        "itself after every presence input is fresh and clear for the release time. Check the "
        "safety loop detector and its wiring.",
        "Look at the loop detector's LEDs: a flickering channel means a damaged loop, wrong "
        "sensitivity or crosstalk between loops; retune or repair. An 'unknown' or 'stale' input "
        "points at the IO module (see io_offline/input_stale). Never lower the arm by hand while "
        "this is raised unless you can see the lane is empty.",
        raise_after_s=5.0, clear_after_s=0.0),
    AlarmSpec(
        "barrier_raise_timeout", _C, _MAJ,
        "栏杆抬起超时，未到达上限位，请检查栏杆机电源、电机和上限位开关",
        "Barrier raise timeout: the up limit switch was not reached within the travel time after a "
        "raise command. Check the barrier machine (power, motor, mechanical block), the raise "
        "output and the up limit switch.",
        "Watch the arm on the next raise: if it does not move, check the barrier machine's power "
        "and the raise output (relay LED, wiring); if it rises but the alarm stays, the up limit "
        "switch or its input is faulty. An arm blocked half-way may be resting on a vehicle.",
        raise_after_s=0.0, clear_after_s=0.0),
    # -- fee display ------------------------------------------------------------------------------
    AlarmSpec(
        "display_offline", _C, _MIN,
        "费额显示器通信中断，请检查显示器电源和通信线",
        "Fee display not answering: drivers do not see fee and balance (ETC stays open or closes "
        "as display_policy says). Check the display's power and its RS-485/Ethernet cable.",
        "Check the display is lit and its bus wiring; compare slave id and the display profile in "
        "laned.toml with the display's settings. The detail has the last Modbus error. laned "
        "rewrites the current content when it answers again.",
        raise_after_s=10.0, clear_after_s=5.0),
    AlarmSpec(
        "display_readback", _C, _MIN,
        "费额显示器显示内容与下发不一致，请检查显示器型号配置",
        "Fee display does not show what laned wrote (read-back differs). Check the display profile "
        "(register layout) in laned.toml matches the display model.",
        "A display that answers but reads back different registers has a different register "
        "layout or firmware than its profile: check the model and the profile; power-cycle it.",
        raise_after_s=5.0, clear_after_s=5.0),
    # -- journal and disk -------------------------------------------------------------------------
    AlarmSpec(
        "journal_not_writable", _C, _CRIT,
        "交易日志无法写入，ETC暂停，请检查磁盘空间和存储介质",
        "Journal not writable: no charge can be recorded durably, so ETC is closed. Check disk "
        "space, the storage medium (I/O errors, read-only) and the journal file's permissions.",
        "`df -h /var/lib/laned`; `dmesg` for I/O errors or a read-only remount (a failing SD card "
        "or SSD); ownership of the journal directory (laned's user). The detail has the SQLite "
        "error. ETC reopens by itself once the journal writes again.",
        raise_after_s=0.0, clear_after_s=10.0),
    AlarmSpec(
        "journal_slow", _C, _MIN,
        "交易日志写入缓慢，可能影响交易时效，请检查存储介质",
        "Journal commits slow: a commit took longer than the threshold (the detail has the times), "
        "which eats into the RSU's answer time. Check the storage medium and other disk load.",
        "A commit is fsynced; a worn SD card or eMMC, or another process writing heavily, makes it "
        "slow. Check `iostat`/`dmesg`, stop the other writer, plan to replace the storage.",
        raise_after_s=0.0, clear_after_s=60.0),
    AlarmSpec(
        "journal_failed", _E, _CRIT,
        "交易记录写入失败，请检查磁盘并核对详情中的交易",
        "A journal write failed for a transaction (the detail says which and the error). Not yet "
        "charged: the vehicle was refused. Already charged: it is never charged again and the lane "
        "stays closed for the operator. Check the disk; reconcile the transaction.",
        "Check the disk as for journal_not_writable. If the detail names a charge seq, the card "
        "was debited but the record is incomplete: report the seq to the centre for reconciliation.",
        hold_s=3600.0),
    AlarmSpec(
        "disk_low", _C, _MAJ,
        "磁盘剩余空间不足，请清理空间或更换存储，并检查数据是否正常上传中心",
        "Disk space low under the journal (below the configured bytes or percent). A full disk "
        "stops the journal and closes ETC. Free space and check the outbox drains to the centre.",
        "`df -h /var/lib/laned`, `du -sh /var/log/* /var/lib/laned/*`. Remove old logs and core "
        "dumps (never the journal database). A growing journal means the outbox is not reaching "
        "the centre: check the uplink.",
        raise_after_s=30.0, clear_after_s=60.0),
    # -- clock ------------------------------------------------------------------------------------
    AlarmSpec(
        "clock_jump", _E, _MAJ,
        "系统时钟跳变，请检查NTP/北斗授时和RTC电池，核对跳变前后的交易时间",
        "Wall clock jumped relative to the monotonic clock (the detail has size and direction). "
        "Transaction times around it are suspect; fee table and status list validity use the wall "
        "clock. Check time sync (NTP/GNSS) and the RTC battery.",
        "`chronyc tracking` / `timedatectl`: is the clock synchronised, from which source? A jump "
        "at every boot means a flat RTC battery. A suspend/resume also shows as a forward jump. "
        "Tell the centre the lane id and the time of the jump so it can check those transactions.",
        hold_s=3600.0),
    # -- fee table and status list ------------------------------------------------------------
    AlarmSpec(
        "fee_table_missing", _C, _CRIT,
        "无有效费率表，无法计费，ETC暂停，请从中心下载或安装费率表",
        "No fee table in force: exit charges cannot be priced, so ETC is closed. Check the fee "
        "table download from the centre, or the fee table file configured in laned.toml.",
        "`laned status` shows the fee table versions known. Check the uplink to the centre and the "
        "download, or install the table file named by laned.toml. A table whose valid_from is in "
        "the future is not in force yet: check the wall clock too.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "fee_table_expired", _C, _CRIT,
        "费率表已过期，收费可能不正确，请从中心下载新版本费率表并核对系统时间",
        "Fee table expired: the table in force is past its end of validity and no newer one has "
        "taken over, so fees may be wrong. Download the current table; check the wall clock.",
        "Check the uplink and the fee table download from the centre; `laned status` shows the "
        "version in force and its validity. If the clock is wrong (see clock_jump), fix time sync.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "status_list_missing", _C, _MAJ,
        "无状态名单(黑名单)，无法拦截失效OBU和卡，请从中心下载名单",
        "No status list (blacklist) loaded: listed OBUs and cards cannot be refused. Check the "
        "list download from the centre and the status list path in laned.toml.",
        "Check the uplink and the list download; `laned status` shows the list version. A full "
        "list must arrive before deltas can apply.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "status_list_old", _C, _WARN,
        "状态名单(黑名单)超过更新期限，请检查与中心的连接和名单下载",
        "Status list older than its maximum age: refusals are based on old data. Check the "
        "connection to the centre and the list download.",
        "Check the uplink (broker reachable, certificates valid) and the centre's list "
        "publication; the detail has the list's version and age.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "list_update_refused", _E, _MIN,
        "中心下发的名单或费率表未被采用(签名、版本或内容不符)，继续使用当前版本，请通知中心",
        "A status list or fee table from the centre was refused (signature, version, size or "
        "content did not check out, or its chunks stopped coming); the lane keeps the version "
        "it uses. The detail says which version and why.",
        "Read the detail: bad_signature/unknown_key means the lane's [uplink.centre_keys] does not "
        "hold the key the centre signs with (or the manifest was tampered with); rollback or "
        "base_mismatch means the centre sent an older version or a delta on another base (it must "
        "send a full list); expired/not_yet_valid: check the lane clock (clock_jump); interrupted: "
        "check the link, the lane asks again when the centre re-announces. Tell the centre the "
        "lane id, the kind and the version. `laned status` shows the versions in use.",
        hold_s=3600.0),
    # -- centre link (laned/uplink) ----------------------------------------------------------------
    AlarmSpec(
        "centre_link_down", _C, _MAJ,
        "与收费中心的连接中断，交易照常进行并保存在本地，恢复后自动补传，请检查网络和证书",
        "Centre link down: laned cannot reach the centre's MQTT broker (the detail has the last error). "
        "The lane keeps charging; every transaction stays in the journal and is sent when the link is back. "
        "Check the network to the centre, the broker address and the lane's certificate.",
        "Check the lane PC's network (cable, switch, `ip addr`, `ping` the broker host in [uplink] host), "
        "then the detail: 'certificate … expired' or 'not valid before' means a renewed certificate or "
        "the clock (see clock_jump); 'refused'/'not authorised' means the broker does not accept the "
        "lane's certificate. laned reconnects by itself with back-off; the alarm clears on reconnect and "
        "the backlog then drains (`laned status`, uplink_backlog_* alarms).",
        raise_after_s=120.0, clear_after_s=0.0),
    AlarmSpec(
        "uplink_backlog_50", _C, _WARN,
        "未上传中心的交易已达本地容量的50%，请检查与中心的连接",
        "Half of the outbox capacity (uplink.backlog_capacity) is taken by transactions the centre has "
        "not acknowledged. Nothing is lost; check why they do not reach the centre.",
        "The detail has the count and the oldest unacknowledged seq and time. Usually centre_link_down "
        "is raised too: fix the link. With the link up, the centre is not acknowledging (tx/ack): tell "
        "the centre the lane id and the oldest seq.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "uplink_backlog_80", _C, _MIN,
        "未上传中心的交易已达本地容量的80%，请尽快恢复与中心的连接",
        "80 % of the outbox capacity is taken by transactions the centre has not acknowledged. Nothing "
        "is lost, but the journal grows on the disk; restore the centre link soon.",
        "As for uplink_backlog_50, with more urgency: check the free disk space too (disk_low). The "
        "journal never drops a row: a full disk closes ETC.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "uplink_backlog_95", _C, _MAJ,
        "未上传中心的交易已达本地容量的95%，请立即恢复与中心的连接并检查磁盘空间",
        "95 % of the outbox capacity is taken by transactions the centre has not acknowledged: the lane "
        "has been cut off from the centre for about a week of traffic. Nothing is lost yet; restore the "
        "link now and check the disk.",
        "Restore the centre link now (centre_link_down). Check free disk space under the journal "
        "(`df -h /var/lib/laned`): a full disk stops the journal and closes ETC. Report the lane id and "
        "the oldest unacknowledged seq to the centre.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "uplink_publish_refused", _C, _MAJ,
        "中心MQTT服务器拒绝车道发布的消息(如未授权)，相关数据无法送达中心，请中心检查ACL权限",
        "The centre's broker refuses what the lane publishes on a topic (MQTT 5 PUBACK reason code, e.g. 0x87 Not "
        "authorized; the detail names each topic and reason). The link is up, but those messages do not reach the "
        "centre: transactions stay in the journal and are sent again until the broker takes them.",
        "Tell the centre the lane id and the topics in the detail: its broker's ACL must let the lane's certificate "
        "(CN = lane id) write every lane-to-centre topic of the contract (tx, tx/batch, reconcile/result, state, alarm, "
        "cmd/result, list/request, list/versions). Nothing is lost and nothing needs changing on the lane; the alarm "
        "clears by itself once the broker accepts a publish on each of those topics again.",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "uplink_row_unsendable", _E, _MAJ,
        "一条交易记录无法按接口规范编码，未上传中心，已保留在本地日志，请上报详情中的流水号",
        "A journal row cannot be encoded as the contract's message (the detail names the seq and what is wrong): it "
        "stays in the journal, waiting, and is not sent again until laned restarts; every other row goes up as usual. "
        "A laned bug or a damaged row.",
        "Never delete or edit the journal. Report the lane id, the seq and the detail to the laned maintainers and "
        "to the centre (the row is missing there). After the fix (a laned update) the row goes up by itself: it "
        "still waits in the outbox, and `oldest_pending_seq` in the health snapshot points at it meanwhile.",
        hold_s=3600.0),
    # -- the lane ---------------------------------------------------------------------------------
    AlarmSpec(
        "etc_closed", _C, _CRIT,
        "ETC暂停服务(降级模式)，车辆请走人工车道，原因见详情",
        "ETC closed (degraded mode): the lane refuses ETC and sends vehicles to the manual lane; "
        "the detail names what closed it. Fix that; ETC reopens by itself.",
        "Read the detail (e.g. 'rsu: link lost; io: …') and follow the alarm of each device named "
        "(rsu_offline, io_offline, journal_not_writable, fee_table_missing …).",
        raise_after_s=0.0, clear_after_s=0.0),
    AlarmSpec(
        "outcome_unknown", _E, _MAJ,
        "交易结果未知(可能已扣款)，请核对该笔交易，切勿重复收费",
        "Transaction outcome unknown: the card may have been debited (B5 lost, or the link dropped "
        "after C6). This OBU is not charged again; the journal keeps the row for reconciliation. "
        "Check the transaction named in the detail.",
        "Do not charge the vehicle by hand. The journal row (seq in the detail) is reconciled by a "
        "re-fetched TAC or by the centre's verdict; if the driver disputes, give the seq and time.",
        hold_s=3600.0),
    AlarmSpec(
        "follow_car", _E, _MAJ,
        "跟车违章：未缴费车辆进入栏杆下，请核查该车辆",
        "Follow car: a vehicle entered the safety loop under the open arm without paying; the arm "
        "stays up for it (never lowered onto it). Check the vehicle per site procedure.",
        "Check the lane camera for the vehicle and its plate, and handle it per site procedure "
        "(stop it, record a violation). Repeated alarms without vehicles: check the safety loop.",
        hold_s=300.0),
    AlarmSpec(
        "passage_timeout", _E, _WARN,
        "放行车辆未在规定时间内通过，请检查现场车辆和安全线圈",
        "A vehicle let through did not cross the safety loop within the passage timeout; the arm "
        "no longer waits for it. Check whether it reversed or stopped, and the safety loop.",
        "Look at the lane: a vehicle that reversed out, or one standing short of the loop. If "
        "vehicles do cross and this still happens, the safety loop misses them: check its "
        "detector's sensitivity.",
        hold_s=300.0),
    AlarmSpec(
        "card_shared", _E, _WARN,
        "同一卡片在另一车辆上再次出现，已按新车辆处理，请核查是否一卡多车",
        "A card that paid within the re-detection window appeared in another vehicle (another OBU "
        "and another plate): it was handled as a new vehicle, not let through on the first "
        "payment. Check for one card used by several vehicles.",
        "Compare the two plates in the detail on the lane camera. A card lent between vehicles "
        "is a matter for the card issuer; the lane charged (or refused) the second vehicle itself.",
        hold_s=300.0),
)


def _catalogue(specs: Iterable[AlarmSpec]) -> Mapping[str, AlarmSpec]:
    out: dict[str, AlarmSpec] = {}
    for spec in specs:
        if spec.code in out:
            raise ValueError(f"alarm {spec.code!r} is in the catalogue twice")
        out[spec.code] = spec
    return MappingProxyType(out)


CATALOGUE: Mapping[str, AlarmSpec] = _catalogue(_SPECS)


# -- what the registry reports ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Alarm:
    """One active alarm, as it stands."""

    code: str
    kind: AlarmKind
    severity: Severity
    raised_at: dt.datetime  # wall time of the raise
    raised_mono: float  # monotonic time of the raise
    detail: str  # the latest detail
    count: int  # occurrences in this episode (events repeat; a condition is 1)
    total: int  # raises/occurrences of this code since the registry started
    last_mono: float  # monotonic time of the latest occurrence or report
    acknowledged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "kind": str(self.kind), "severity": str(self.severity),
                "raised_at": self.raised_at.isoformat(), "detail": self.detail, "count": self.count,
                "total": self.total, "acknowledged": self.acknowledged}


class Change(enum.StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class AlarmChange:
    """An alarm was raised or cleared: log it, journal it, publish it."""

    change: Change
    alarm: Alarm  # as it stood at the change
    zh: str
    en: str
    at: float  # monotonic time of the change
    wall: dt.datetime  # wall time of the change
    cause: str  # why now: "held 5 s", "flapping: 5 onsets in 60 s", "hold time 300 s passed" …

    @property
    def code(self) -> str:
        return self.alarm.code

    @property
    def severity(self) -> Severity:
        return self.alarm.severity

    @property
    def raised(self) -> bool:
        return self.change is Change.RAISED

    def message(self) -> str:
        """One log line: ``alarm rsu_offline raised (critical): RSU link down… — detail [cause]``."""
        detail = f" — {self.alarm.detail}" if self.alarm.detail else ""
        return f"alarm {self.code} {self.change} ({self.severity}): {self.en}{detail} [{self.cause}]"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the journal and the uplink."""
        return {"change": str(self.change), **self.alarm.as_dict(), "zh": self.zh, "en": self.en,
                "at": self.wall.isoformat(), "cause": self.cause}


# -- the registry ------------------------------------------------------------------------------------

@dataclass
class _Raised:
    mono: float
    wall: dt.datetime
    detail: str
    count: int = 1
    last_mono: float = 0.0
    acknowledged: bool = False


@dataclass
class _State:
    spec: AlarmSpec
    raise_after: float
    clear_after: float
    hold: float
    sources: dict[str, str] = field(default_factory=dict)  # condition: asserting source → detail
    present_since: float | None = None  # condition: held continuously since
    absent_since: float | None = None  # condition: absent continuously since
    onsets: deque[float] = field(default_factory=deque)  # condition: times it came (flap detection)
    raised: _Raised | None = None
    expires: float = 0.0  # event: clears at this monotonic time
    total: int = 0

    def detail(self) -> str:
        seen: list[str] = []
        for d in self.sources.values():
            if d and d not in seen:
                seen.append(d)
        return "; ".join(seen)


def _per_code(name: str, value: Mapping[str, float] | float | None, catalogue: Mapping[str, AlarmSpec],
              kind: AlarmKind) -> dict[str, float]:
    """Validate a per-code override: known codes of the right kind, non-negative seconds."""
    if value is None:
        return {}
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be ≥ 0 s, got {value}")
        return {code: float(value) for code, spec in catalogue.items() if spec.kind is kind}
    out = {}
    for code, seconds in value.items():
        spec = catalogue.get(code)
        if spec is None:
            raise UnknownAlarm(code)
        if spec.kind is not kind:
            raise ValueError(f"{name}[{code!r}]: {code} is {spec.kind.article}, {name} applies to {kind}s only")
        if seconds < 0:
            raise ValueError(f"{name}[{code!r}] must be ≥ 0 s, got {seconds}")
        out[code] = float(seconds)
    return out


class AlarmRegistry:
    """The lane's alarms: raise, debounce, clear, count, remember.

    ``debounce_s`` / ``clear_debounce_s`` override the catalogue's raise / clear debounce
    of conditions (one number for every condition, or a dict by code), ``hold_s`` the hold
    time of events. ``flap_count`` onsets of a condition within ``flap_window_s`` raise it
    even if none lasted its debounce, and keep it from clearing (0 turns this off).
    """

    def __init__(self, catalogue: Mapping[str, AlarmSpec] = CATALOGUE, *,
                 debounce_s: Mapping[str, float] | float | None = None,
                 clear_debounce_s: Mapping[str, float] | float | None = None,
                 hold_s: Mapping[str, float] | float | None = None,
                 flap_count: int = 5, flap_window_s: float = 60.0, history_size: int = 1000) -> None:
        if flap_count < 0 or flap_window_s <= 0 or history_size < 1:
            raise ValueError("flap_count must be ≥ 0, flap_window_s > 0 and history_size ≥ 1")
        self.catalogue = catalogue
        raise_after = _per_code("debounce_s", debounce_s, catalogue, AlarmKind.CONDITION)
        clear_after = _per_code("clear_debounce_s", clear_debounce_s, catalogue, AlarmKind.CONDITION)
        hold = _per_code("hold_s", hold_s, catalogue, AlarmKind.EVENT)
        self.flap_count = flap_count
        self.flap_window_s = float(flap_window_s)
        self._states = {
            code: _State(spec, raise_after.get(code, spec.raise_after_s), clear_after.get(code, spec.clear_after_s),
                         hold.get(code, spec.hold_s))
            for code, spec in catalogue.items()
        }
        self._history: deque[AlarmChange] = deque(maxlen=history_size)
        self._counts: Counter[str] = Counter()

    # -- looking up ------------------------------------------------------------------------------
    def spec(self, code: str) -> AlarmSpec:
        return self._state(code).spec

    def _state(self, code: str) -> _State:
        try:
            return self._states[code]
        except KeyError:
            raise UnknownAlarm(code) from None

    def _kind(self, code: str, kind: AlarmKind, what: str) -> _State:
        st = self._state(code)
        if st.spec.kind is not kind:
            raise ValueError(f"alarm {code!r} is {st.spec.kind.article}: {what} is for {kind}s "
                             f"(use raise_alarm/clear_alarm to dispatch on the kind)")
        return st

    # -- conditions --------------------------------------------------------------------------------
    def set(self, code: str, active: bool, now: float, wall: dt.datetime, detail: str = "", *,
            source: str = "", evaluate: bool = True) -> list[AlarmChange]:
        """Report whether condition ``code`` holds, according to ``source``.

        Call on every check or only on changes: a source's last report holds until its
        next. The condition holds while any source says so; it is raised after holding for
        its debounce (now, or by a later :meth:`set`/:meth:`tick`) and cleared after being
        absent for its clear debounce. ``evaluate=False`` only records the report; the
        next :meth:`tick` decides (so a batch of reports raises with every source's detail).
        """
        st = self._kind(code, AlarmKind.CONDITION, "set()")
        was = bool(st.sources)
        if active:
            st.sources[source] = detail
        else:
            st.sources.pop(source, None)
        now_active = bool(st.sources)
        if now_active and not was:
            st.present_since, st.absent_since = now, None
            st.onsets.append(now)
        elif was and not now_active:
            st.present_since, st.absent_since = None, now
        if st.raised is not None and now_active:
            st.raised.detail = st.detail() or st.raised.detail
            st.raised.last_mono = now
        return self._evaluate(st, now, wall) if evaluate else []

    def _flapping(self, st: _State, now: float) -> int:
        """Onsets within the flap window if that makes it flapping, else 0."""
        while st.onsets and now - st.onsets[0] > self.flap_window_s:
            st.onsets.popleft()
        n = len(st.onsets)
        return n if self.flap_count and n >= self.flap_count else 0

    def _evaluate(self, st: _State, now: float, wall: dt.datetime) -> list[AlarmChange]:
        flaps = self._flapping(st, now)
        if st.raised is None:
            if not st.sources or st.present_since is None:
                return []
            held = now - st.present_since
            if held >= st.raise_after:
                cause = f"held {held:.1f} s (debounce {st.raise_after:g} s)" if st.raise_after else "at once"
            elif flaps:
                cause = f"flapping: {flaps} onsets within {self.flap_window_s:g} s"
            else:
                return []
            return [self._raise(st, now, wall, st.detail(), cause)]
        if st.sources or st.absent_since is None:
            return []
        gone = now - st.absent_since
        if gone < st.clear_after or flaps:
            return []
        cause = f"absent {gone:.1f} s (debounce {st.clear_after:g} s)" if st.clear_after else "condition gone"
        return [self._clear(st, now, wall, cause)]

    # -- events ------------------------------------------------------------------------------------
    def event(self, code: str, now: float, wall: dt.datetime, detail: str = "") -> list[AlarmChange]:
        """Event ``code`` happened. Raised if not active; else counted, detail and hold renewed."""
        st = self._kind(code, AlarmKind.EVENT, "event()")
        st.expires = now + st.hold
        if st.raised is not None:
            st.total += 1
            self._counts[st.spec.code] += 1
            st.raised.count += 1
            st.raised.detail = detail or st.raised.detail
            st.raised.last_mono = now
            return []
        return [self._raise(st, now, wall, detail, "event")]

    def acknowledge(self, code: str, now: float, wall: dt.datetime, by: str = "operator") -> list[AlarmChange]:
        """An operator saw it. An active event clears now; an active condition is marked
        acknowledged and stays until the condition is gone."""
        st = self._state(code)
        if st.raised is None:
            return []
        if st.spec.kind is AlarmKind.EVENT:
            return [self._clear(st, now, wall, f"acknowledged by {by}")]
        st.raised.acknowledged = True
        return []

    # -- either kind -------------------------------------------------------------------------------
    def raise_alarm(self, code: str, now: float, wall: dt.datetime, detail: str = "", *,
                    source: str = "lane") -> list[AlarmChange]:
        """For a ``RaiseAlarm`` action: :meth:`event` for an event, :meth:`set` (active) for a condition."""
        if self._state(code).spec.kind is AlarmKind.EVENT:
            return self.event(code, now, wall, detail)
        return self.set(code, True, now, wall, detail, source=source)

    def clear_alarm(self, code: str, now: float, wall: dt.datetime, detail: str = "", *,
                    source: str = "lane") -> list[AlarmChange]:
        """For a ``ClearAlarm`` action: a condition stops holding for ``source`` (cleared after
        its clear debounce, if no other source holds it); an event is acknowledged."""
        if self._state(code).spec.kind is AlarmKind.EVENT:
            return self.acknowledge(code, now, wall, by=source)
        return self.set(code, False, now, wall, detail, source=source)

    def tick(self, now: float, wall: dt.datetime) -> list[AlarmChange]:
        """Raise and clear what debounce and hold times decide by ``now``."""
        out: list[AlarmChange] = []
        for st in self._states.values():
            if st.spec.kind is AlarmKind.CONDITION:
                out.extend(self._evaluate(st, now, wall))
            elif st.raised is not None and now >= st.expires:
                out.append(self._clear(st, now, wall, f"hold time {st.hold:g} s passed"))
        return out

    # -- transitions -------------------------------------------------------------------------------
    def _raise(self, st: _State, now: float, wall: dt.datetime, detail: str, cause: str) -> AlarmChange:
        st.total += 1
        self._counts[st.spec.code] += 1
        st.raised = _Raised(now, wall, detail, last_mono=now)
        return self._record(Change.RAISED, st, st.raised, now, wall, cause)

    def _clear(self, st: _State, now: float, wall: dt.datetime, cause: str) -> AlarmChange:
        raised, st.raised = st.raised, None
        assert raised is not None
        return self._record(Change.CLEARED, st, raised, now, wall, cause)

    def _record(self, change: Change, st: _State, raised: _Raised, now: float, wall: dt.datetime,
                cause: str) -> AlarmChange:
        ch = AlarmChange(change, self._alarm(st, raised), st.spec.zh, st.spec.en, now, wall, cause)
        self._history.append(ch)
        return ch

    @staticmethod
    def _alarm(st: _State, r: _Raised) -> Alarm:
        s = st.spec
        return Alarm(s.code, s.kind, s.severity, r.wall, r.mono, r.detail, r.count, st.total, r.last_mono,
                     r.acknowledged)

    # -- reading -----------------------------------------------------------------------------------
    def active(self) -> list[Alarm]:
        """Active alarms, the most severe first, then the oldest first."""
        alarms = [self._alarm(st, st.raised) for st in self._states.values() if st.raised is not None]
        return sorted(alarms, key=lambda a: (a.severity.rank, a.raised_mono))

    def is_active(self, code: str) -> bool:
        return self._state(code).raised is not None

    def pending(self) -> list[str]:
        """Conditions that hold but are not raised yet (waiting for their debounce)."""
        return [code for code, st in self._states.items() if st.sources and st.raised is None]

    @property
    def history(self) -> tuple[AlarmChange, ...]:
        """The latest raises and clears, oldest first (bounded by ``history_size``)."""
        return tuple(self._history)

    @property
    def counts(self) -> dict[str, int]:
        """Raises of each condition and occurrences of each event since the registry started."""
        return dict(self._counts)


def status_line(alarms: Iterable[Alarm], *, limit: int = 4) -> str:
    """One short line for systemd's STATUS= and `laned status`:
    ``alarms: rsu_offline(critical), display_offline(minor)`` — at most ``limit`` alarms,
    the most severe first, then ``+N more``; ``alarms: none`` when there are none."""
    ordered = sorted(alarms, key=lambda a: (a.severity.rank, a.raised_mono))
    if not ordered:
        return "alarms: none"
    parts = [f"{a.code}({a.severity})" + (f"×{a.count}" if a.count > 1 else "") for a in ordered[:limit]]
    if len(ordered) > limit:
        parts.append(f"+{len(ordered) - limit} more")
    return "alarms: " + ", ".join(parts)
