#Requires -Version 5.1
<#
  prepare-master.ps1 — Khoi

  Chuẩn bị máy mẫu Windows trước khi đưa ổ đĩa vào Khoi (xem README.md, bước 3–8):
    - tắt Khởi động nhanh (HiberbootEnabled = 0) và Ngủ đông (powercfg /h off);
    - tệp phân trang: tắt hẳn (mặc định) hoặc cố định kích thước (-PageFileMB);
    - tắt trình quản lý mật khẩu của Chrome, Edge, Cốc Cốc bằng chính sách;
    - xoá hồ sơ Wi-Fi, vô hiệu hoá dịch vụ WLAN AutoConfig (WlanSvc);
    - kiểm tra driver card mạng có dây có được nạp lúc khởi động không (báo cáo;
      -SetNicBootFlags để thêm BootFlags 0x1), gỡ liên kết WFP Lightweight Filter (KB976042);
    - liệt kê thành viên nhóm Administrators và cảnh báo (không xoá ai).
  Phải chạy bằng PowerShell "Run as administrator". Chạy lại nhiều lần vẫn an toàn.
  -WhatIf: chỉ xem trước, không thay đổi gì. Chưa được chạy thử trên Windows thật.

  Usage:
    powershell.exe -NoProfile -ExecutionPolicy Bypass -File .\prepare-master.ps1 [-WhatIf]
        [-PageFileMB <MB>] [-SetNicBootFlags]
  Exit codes: 0 = done, 1 = a step failed (see [FAIL] lines), 2 = not run as administrator.
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    # 0 (default): no page file at all. N > 0: one fixed N-MB page file on the system drive.
    [ValidateRange(0, 262144)]
    [int]$PageFileMB = 0,
    # Add bit 0x1 (CM_SERVICE_NETWORK_BOOT_LOAD) to BootFlags of the wired NIC drivers and iScsiPrt.
    [switch]$SetNicBootFlags
)

# Stop on errors inside a step; each step catches its own errors so one failure does not skip the rest.
$ErrorActionPreference = 'Stop'
# Keep the script's own ShouldProcess handle so helper functions honour -WhatIf / -Confirm.
$script:Cmd = $PSCmdlet
# Counters for the summary at the end.
$script:Changes = 0
$script:Warnings = 0
$script:Failures = 0

# --- Refuse to run without elevation -------------------------------------------------------
# Every change below is machine-wide (HKLM, services, bindings), which needs an elevated token.
$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    # Say plainly what to do, in both languages, then stop before touching anything.
    Write-Host 'ERROR: this script must run in an elevated PowerShell (right-click PowerShell > Run as administrator).' -ForegroundColor Red
    Write-Host 'LỖI: hãy mở PowerShell bằng "Run as administrator" rồi chạy lại script này.' -ForegroundColor Red
    exit 2
}

# --- Output helpers ------------------------------------------------------------------------
# One line per finding, with a fixed tag the officer can scan for.
function Write-Ok([string]$Msg) { Write-Host "[OK]      $Msg" -ForegroundColor Green }
function Write-Changed([string]$Msg) { $script:Changes++; Write-Host "[CHANGED] $Msg" -ForegroundColor Cyan }
function Write-Warn([string]$Msg) { $script:Warnings++; Write-Host "[WARN]    $Msg" -ForegroundColor Yellow }
function Write-Info([string]$Msg) { Write-Host "[INFO]    $Msg" }
function Write-Fail([string]$Msg) { $script:Failures++; Write-Host "[FAIL]    $Msg" -ForegroundColor Red }

# Run one step; an error inside it is reported as [FAIL] and the next step still runs.
function Invoke-Step([string]$Title, [scriptblock]$Body) {
    Write-Host ''
    Write-Host "== $Title" -ForegroundColor White
    try { & $Body } catch { Write-Fail "$Title : $($_.Exception.Message)" }
}

# Read a registry value, or $null when the key or the value does not exist (no error either way).
function Get-RegValue([string]$Path, [string]$Name) {
    if (-not (Test-Path -LiteralPath $Path)) { return $null }
    return (Get-Item -LiteralPath $Path).GetValue($Name, $null)
}

# Set a DWORD only when it differs, so a second run changes nothing and says [OK].
function Set-RegDword([string]$Path, [string]$Name, [int]$Value) {
    $current = Get-RegValue $Path $Name
    if ($null -ne $current -and [int64]$current -eq $Value) {
        Write-Ok "$Path\$Name is already $Value"
        return
    }
    if ($script:Cmd.ShouldProcess("$Path\$Name", "set DWORD to $Value")) {
        # Create the key only if missing (New-Item -Force on an existing key would be harmless too).
        if (-not (Test-Path -LiteralPath $Path)) { New-Item -Path $Path -Force | Out-Null }
        New-ItemProperty -LiteralPath $Path -Name $Name -PropertyType DWord -Value $Value -Force | Out-Null
        Write-Changed "$Path\$Name = $Value (was: $(if ($null -eq $current) { 'not set' } else { $current }))"
    }
}

# The wired, physical NICs (802.3). Wi-Fi, Bluetooth and virtual adapters are left alone.
function Get-WiredAdapters {
    @(Get-NetAdapter -Physical | Where-Object { $_.PhysicalMediaType -eq '802.3' })
}

# The driver service name of an adapter (e.g. e1dexpress, rt640x64), via Win32_NetworkAdapter.
function Get-AdapterService($Adapter) {
    $wmi = Get-CimInstance -ClassName Win32_NetworkAdapter -Filter ("InterfaceIndex = {0}" -f $Adapter.InterfaceIndex)
    if ($wmi -and $wmi.ServiceName) { return [string]$wmi.ServiceName }
    return $null
}

Write-Host "Khoi prepare-master: $(Get-Date -Format 'yyyy-MM-dd HH:mm') on $env:COMPUTERNAME$(if ($WhatIfPreference) { ' (WhatIf: nothing will be changed)' })"

# --- Step 4: Fast Startup and hibernation off ----------------------------------------------
Invoke-Step 'Fast Startup off (HiberbootEnabled = 0)' {
    # Fast Startup makes "Shut down" a partial hibernation that leaves NTFS hibernated: such a
    # volume must not be captured, and a seat resuming onto a reset disk would corrupt it.
    Set-RegDword 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager\Power' 'HiberbootEnabled' 0
}

Invoke-Step 'Hibernation off (powercfg /h off)' {
    # HibernateEnabled = 0 and no hiberfil.sys means hibernation is already off.
    $enabled = Get-RegValue 'HKLM:\SYSTEM\CurrentControlSet\Control\Power' 'HibernateEnabled'
    $hiberfil = Join-Path $env:SystemDrive 'hiberfil.sys'
    if ($null -ne $enabled -and [int]$enabled -eq 0 -and -not (Test-Path -LiteralPath $hiberfil)) {
        Write-Ok 'hibernation is already off and hiberfil.sys is absent'
        return
    }
    if ($script:Cmd.ShouldProcess('hibernation', 'powercfg /hibernate off')) {
        # Turns hibernation off for the whole machine and deletes hiberfil.sys (also disables Fast Startup).
        & powercfg.exe /hibernate off
        if ($LASTEXITCODE -ne 0) { throw "powercfg /hibernate off exited with $LASTEXITCODE" }
        Write-Changed 'hibernation turned off (hiberfil.sys removed)'
    }
}

# --- Step 5: page file ----------------------------------------------------------------------
Invoke-Step $(if ($PageFileMB -eq 0) { 'Page file off' } else { "Page file fixed at $PageFileMB MB" }) {
    # On a seat every page-file write crosses the network into the seat's overlay and is thrown
    # away at reset; reports also tie a page file on an iSCSI disk to bugchecks on Windows 10.
    $mmKey = 'SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management'
    # Assigned inside each branch: an empty array returned from an if expression would become $null.
    if ($PageFileMB -eq 0) { $want = [string[]]@() } else { $want = [string[]]@("$env:SystemDrive\pagefile.sys $PageFileMB $PageFileMB") }
    # System-managed page files must be switched off first, or Windows keeps managing the size.
    $cs = Get-CimInstance -ClassName Win32_ComputerSystem
    if ($cs.AutomaticManagedPagefile) {
        if ($script:Cmd.ShouldProcess('Win32_ComputerSystem', 'AutomaticManagedPagefile = false')) {
            Set-CimInstance -InputObject $cs -Property @{ AutomaticManagedPagefile = $false }
            Write-Changed 'automatic page-file management turned off'
        }
    } else {
        Write-Ok 'automatic page-file management is already off'
    }
    # PagingFiles (REG_MULTI_SZ) is what Windows reads at boot: empty = no page file,
    # "C:\pagefile.sys N N" = one file of fixed size N MB.
    $current = [string[]]@(Get-RegValue "HKLM:\$mmKey" 'PagingFiles' | Where-Object { $_ })
    if (($current -join '|') -eq ($want -join '|')) {
        Write-Ok "PagingFiles is already [$($want -join '; ')]"
    } elseif ($script:Cmd.ShouldProcess("HKLM\$mmKey\PagingFiles", "set to [$($want -join '; ')]")) {
        # .NET is used because it can write an empty REG_MULTI_SZ, which the registry provider cannot.
        $key = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey($mmKey, $true)
        try { $key.SetValue('PagingFiles', $want, [Microsoft.Win32.RegistryValueKind]::MultiString) } finally { $key.Close() }
        Write-Changed "PagingFiles = [$($want -join '; ')] (was: [$($current -join '; ')]); takes effect after a restart"
    }
    # Clearing the page file at shutdown would write the whole file over the network; just report it.
    $clear = Get-RegValue "HKLM:\$mmKey" 'ClearPageFileAtShutdown'
    if ($null -ne $clear -and [int]$clear -ne 0 -and $PageFileMB -gt 0) {
        Write-Warn 'ClearPageFileAtShutdown is on: every shutdown rewrites the page file over the network (set by a security policy?)'
    }
}

# --- Step 7: browser password managers off by policy ----------------------------------------
Invoke-Step 'Browser password managers off (policy PasswordManagerEnabled = 0)' {
    # Shared counter PCs must not keep passwords of line-of-business systems in the browser.
    # Chrome: documented policy key.
    Set-RegDword 'HKLM:\SOFTWARE\Policies\Google\Chrome' 'PasswordManagerEnabled' 0
    # Edge: documented policy key.
    Set-RegDword 'HKLM:\SOFTWARE\Policies\Microsoft\Edge' 'PasswordManagerEnabled' 0
    # Cốc Cốc: no official documentation found; the three forms seen in the field are all written
    # (a value under a key the browser does not read is harmless). Verify on coccoc://policy.
    Set-RegDword 'HKLM:\SOFTWARE\Policies\CocCoc\Browser' 'PasswordManagerEnabled' 0
    Set-RegDword 'HKLM:\SOFTWARE\Policies\CocCoc\CocCoc' 'PasswordManagerEnabled' 0
    Set-RegDword 'HKLM:\SOFTWARE\Policies\CocCoc' 'PasswordManagerEnabled' 0
    Write-Info 'check chrome://policy, edge://policy and coccoc://policy on the master; remove any saved passwords from every browser profile'
}

# --- Step 8: Wi-Fi removed ------------------------------------------------------------------
Invoke-Step 'Wi-Fi removed (profiles deleted, WLAN AutoConfig disabled)' {
    # The directive: TTHC machines are on the wired LAN only; a saved profile would be on every seat.
    $profileDir = Join-Path $env:ProgramData 'Microsoft\Wlansvc\Profiles\Interfaces'
    $profiles = @(Get-ChildItem -LiteralPath $profileDir -Filter '*.xml' -Recurse -ErrorAction SilentlyContinue)
    $svc = Get-Service -Name 'WlanSvc' -ErrorAction SilentlyContinue
    if ($profiles.Count -gt 0) {
        if (-not $svc) {
            # Without the service netsh cannot delete profiles; leave the files for the officer.
            Write-Warn "$($profiles.Count) Wi-Fi profile file(s) under $profileDir but no WlanSvc service: delete them by hand"
        } elseif ($script:Cmd.ShouldProcess("$($profiles.Count) Wi-Fi profile(s)", 'netsh wlan delete profile name=* i=*')) {
            # netsh needs WlanSvc running: allow and start it just for the deletion (disabled again below).
            if ($svc.StartType -eq 'Disabled') { Set-Service -Name 'WlanSvc' -StartupType Manual }
            if ((Get-Service -Name 'WlanSvc').Status -ne 'Running') { Start-Service -Name 'WlanSvc' }
            # Delete every saved profile on every wireless interface.
            & netsh.exe wlan delete profile name=* i=* | Out-Host
            $left = @(Get-ChildItem -LiteralPath $profileDir -Filter '*.xml' -Recurse -ErrorAction SilentlyContinue)
            if ($left.Count -gt 0) { Write-Warn "$($left.Count) Wi-Fi profile file(s) remain under $profileDir" }
            else { Write-Changed "$($profiles.Count) Wi-Fi profile(s) deleted" }
        }
    } else {
        Write-Ok 'no saved Wi-Fi profiles'
    }
    if (-not $svc) {
        # Server editions without the Wireless LAN Service feature have no WlanSvc: nothing to disable.
        Write-Ok 'WLAN AutoConfig (WlanSvc) is not installed'
        return
    }
    $svc = Get-Service -Name 'WlanSvc'
    if ($svc.Status -ne 'Stopped') {
        if ($script:Cmd.ShouldProcess('WlanSvc', 'stop')) {
            # Stop now so the master cannot join a Wi-Fi network before capture.
            Stop-Service -Name 'WlanSvc' -Force
            Write-Changed 'WLAN AutoConfig (WlanSvc) stopped'
        }
    }
    if ($svc.StartType -ne 'Disabled') {
        if ($script:Cmd.ShouldProcess('WlanSvc', 'startup type Disabled')) {
            # Disabled: Windows cannot use Wi-Fi on any seat booted from this image.
            Set-Service -Name 'WlanSvc' -StartupType Disabled
            Write-Changed 'WLAN AutoConfig (WlanSvc) disabled'
        }
    } else {
        Write-Ok 'WLAN AutoConfig (WlanSvc) is already disabled'
    }
}

# --- Step 3: NIC driver boot-start and the WFP lightweight filter (KB976042) ----------------
Invoke-Step 'Wired NIC: boot-start driver and WFP Lightweight Filter (KB976042)' {
    $adapters = Get-WiredAdapters
    if ($adapters.Count -eq 0) { Write-Warn 'no wired physical network adapter found'; return }
    foreach ($a in $adapters) {
        Write-Info "adapter '$($a.Name)': $($a.InterfaceDescription), MAC $($a.MacAddress), status $($a.Status)"
        # 3a. The seat reads its disk through this NIC, so its driver must load with the boot drivers:
        # Start = 0 (boot-start), or BootFlags bit 0x1 = promoted to boot-start on a network boot.
        $svcName = Get-AdapterService $a
        if (-not $svcName) { Write-Warn "  cannot find the driver service of '$($a.Name)'" }
        else {
            $svcKey = "HKLM:\SYSTEM\CurrentControlSet\Services\$svcName"
            $start = Get-RegValue $svcKey 'Start'
            $flags = Get-RegValue $svcKey 'BootFlags'
            $flagsText = if ($null -eq $flags) { 'not set' } else { '0x{0:X}' -f [int]$flags }
            if ($null -ne $start -and [int]$start -eq 0) {
                Write-Ok "  driver service '$svcName' is boot-start (Start = 0)"
            } elseif ($null -ne $flags -and ([int]$flags -band 1) -eq 1) {
                Write-Ok "  driver service '$svcName': Start = $start, BootFlags = $flagsText (promoted to boot-start on a network boot)"
            } elseif ($SetNicBootFlags) {
                if ($script:Cmd.ShouldProcess("$svcKey\BootFlags", 'add bit 0x1')) {
                    # OR in the bit, keeping any other bits the driver's INF set.
                    $new = if ($null -eq $flags) { 1 } else { [int]$flags -bor 1 }
                    New-ItemProperty -LiteralPath $svcKey -Name 'BootFlags' -PropertyType DWord -Value $new -Force | Out-Null
                    Write-Changed ("  driver service '$svcName': BootFlags {0} -> 0x{1:X}" -f $flagsText, $new)
                }
            } else {
                Write-Warn "  driver service '$svcName': Start = $start, BootFlags = ${flagsText}: not boot-start on a network boot; run again with -SetNicBootFlags (README step 3a)"
            }
        }
        # 3b. The WFP lightweight filter is not boot-start and not safe for paging I/O; bound to the
        # boot NIC it can stop an iSCSI-booted Windows with 0x7B (KB976042). Unbind it from wired NICs.
        $bindings = @(Get-NetAdapterBinding -Name $a.Name -AllBindings | Where-Object { $_.ComponentID -like 'ms_wfplwf*' })
        if ($bindings.Count -eq 0) { Write-Info "  no ms_wfplwf* binding found on '$($a.Name)'" }
        foreach ($b in $bindings) {
            if (-not $b.Enabled) { Write-Ok "  $($b.ComponentID) ($($b.DisplayName)) is already unbound"; continue }
            if ($script:Cmd.ShouldProcess("$($a.Name) / $($b.ComponentID)", 'Disable-NetAdapterBinding')) {
                # Only this one binding of this one adapter; the network may drop for a few seconds.
                Disable-NetAdapterBinding -InputObject $b
                Write-Changed "  $($b.ComponentID) ($($b.DisplayName)) unbound from '$($a.Name)'"
            }
        }
    }
    # Windows' own iSCSI initiator driver must also start early on a network boot.
    $iscsiKey = 'HKLM:\SYSTEM\CurrentControlSet\Services\iScsiPrt'
    $iStart = Get-RegValue $iscsiKey 'Start'
    $iFlags = Get-RegValue $iscsiKey 'BootFlags'
    $iFlagsText = if ($null -eq $iFlags) { 'not set' } else { '0x{0:X}' -f [int]$iFlags }
    if (-not (Test-Path -LiteralPath $iscsiKey)) {
        Write-Warn 'iScsiPrt (Microsoft iSCSI initiator) service not found'
    } elseif (($null -ne $iStart -and [int]$iStart -eq 0) -or ($null -ne $iFlags -and ([int]$iFlags -band 1) -eq 1)) {
        Write-Ok "iScsiPrt: Start = $iStart, BootFlags = $iFlagsText"
    } elseif ($SetNicBootFlags) {
        if ($script:Cmd.ShouldProcess("$iscsiKey\BootFlags", 'add bit 0x1')) {
            $new = if ($null -eq $iFlags) { 1 } else { [int]$iFlags -bor 1 }
            New-ItemProperty -LiteralPath $iscsiKey -Name 'BootFlags' -PropertyType DWord -Value $new -Force | Out-Null
            Write-Changed ("iScsiPrt: BootFlags {0} -> 0x{1:X}" -f $iFlagsText, $new)
        }
    } else {
        Write-Warn "iScsiPrt: Start = $iStart, BootFlags = ${iFlagsText}: run again with -SetNicBootFlags (README step 3a)"
    }
}

# --- Step 6: local Administrators (report only) ---------------------------------------------
Invoke-Step 'Members of the local Administrators group (report only, nothing removed)' {
    # Staff must be standard users; one admin account (the IT officer's) at most. Found by SID,
    # so the check works on a Vietnamese-language Windows too.
    $adminSid = New-Object Security.Principal.SecurityIdentifier('S-1-5-32-544')
    $members = @()
    try {
        $members = @(Get-LocalGroupMember -SID $adminSid | ForEach-Object { "$($_.Name) ($($_.ObjectClass), $($_.PrincipalSource))" })
    } catch {
        # Get-LocalGroupMember fails on groups holding orphaned SIDs; fall back to ADSI.
        $groupName = $adminSid.Translate([Security.Principal.NTAccount]).Value.Split('\')[-1]
        $group = [ADSI]"WinNT://$env:COMPUTERNAME/$groupName,group"
        $members = @($group.psbase.Invoke('Members') | ForEach-Object { $_.GetType().InvokeMember('ADsPath', 'GetProperty', $null, $_, $null) })
    }
    foreach ($m in $members) { Write-Info "  Administrators: $m" }
    if ($members.Count -gt 1) {
        Write-Warn "$($members.Count) members in Administrators: staff accounts must be standard users, with one admin account (the IT officer's) at most"
    } else {
        Write-Ok "$($members.Count) member(s) in Administrators"
    }
    # The built-in Administrator (RID 500) shared across the room is exactly what the directive forbids.
    $builtin = @(Get-LocalUser | Where-Object { $_.SID.Value -like 'S-1-5-21-*-500' -and $_.Enabled })
    if ($builtin.Count -gt 0) { Write-Warn "the built-in account '$($builtin[0].Name)' is enabled: disable it unless it is the officer's only admin account" }
}

# --- Summary ---------------------------------------------------------------------------------
Write-Host ''
Write-Host ("Summary: {0} change(s), {1} warning(s), {2} failure(s)." -f $script:Changes, $script:Warnings, $script:Failures)
if ($script:Changes -gt 0) { Write-Host 'Restart the master, then run check-master.ps1. Before capture, shut down fully (not Sleep/Hibernate).' }
if ($script:Failures -gt 0) { exit 1 }
exit 0
