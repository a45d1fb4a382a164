#Requires -Version 5.1
<#
  check-master.ps1 — Khoi

  Kiểm tra máy mẫu (hoặc một máy trạm đang chạy ảnh đĩa) và BÁO CÁO, KHÔNG THAY ĐỔI GÌ:
  Khởi động nhanh, Ngủ đông, tệp phân trang, BitLocker, chế độ UEFI/BIOS, driver card mạng
  (boot-start, WFP Lightweight Filter), chính sách mật khẩu của trình duyệt, Wi-Fi, tài khoản
  quản trị, kích hoạt bản quyền (KMS), chính sách Windows Update. Mỗi dòng [WARN] cần xử lý
  trước khi đưa ảnh đĩa vào Khoi (xem README.md). Phải chạy bằng "Run as administrator"
  (một số mục chỉ đọc được với quyền quản trị). Chưa được chạy thử trên Windows thật.

  Usage:
    powershell.exe -NoProfile -ExecutionPolicy Bypass -File .\check-master.ps1
  Exit codes: 0 = no warning, 1 = at least one [WARN] or [FAIL], 2 = not run as administrator.
#>
[CmdletBinding()]
param()

# Errors inside a check become [FAIL] lines; the other checks still run.
$ErrorActionPreference = 'Stop'
$script:Warnings = 0
$script:Failures = 0

# --- Refuse to run without elevation -------------------------------------------------------
# BitLocker, licensing and some registry keys can only be read with an elevated token.
$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Write-Host 'ERROR: this script must run in an elevated PowerShell (right-click PowerShell > Run as administrator).' -ForegroundColor Red
    Write-Host 'LỖI: hãy mở PowerShell bằng "Run as administrator" rồi chạy lại script này.' -ForegroundColor Red
    exit 2
}

# --- Output helpers (read-only: there is no "changed" tag in this script) ---------------------
function Write-Ok([string]$Msg) { Write-Host "[OK]   $Msg" -ForegroundColor Green }
function Write-Warn([string]$Msg) { $script:Warnings++; Write-Host "[WARN] $Msg" -ForegroundColor Yellow }
function Write-Info([string]$Msg) { Write-Host "[INFO] $Msg" }
function Write-Fail([string]$Msg) { $script:Failures++; Write-Host "[FAIL] $Msg" -ForegroundColor Red }

# Run one check; an error is reported and the next check still runs.
function Invoke-Check([string]$Title, [scriptblock]$Body) {
    Write-Host ''
    Write-Host "== $Title" -ForegroundColor White
    try { & $Body } catch { Write-Fail "$Title : $($_.Exception.Message)" }
}

# Read a registry value, or $null when the key or value is missing. Never writes.
function Get-RegValue([string]$Path, [string]$Name) {
    if (-not (Test-Path -LiteralPath $Path)) { return $null }
    return (Get-Item -LiteralPath $Path).GetValue($Name, $null)
}

# Show a value that may be missing.
function Format-Value($Value) { if ($null -eq $Value) { 'not set' } else { "$Value" } }

# --- Machine --------------------------------------------------------------------------------
Invoke-Check 'Windows and firmware' {
    $os = Get-CimInstance -ClassName Win32_OperatingSystem
    Write-Info "$($os.Caption) $($os.Version) (build $($os.BuildNumber)), computer name $env:COMPUTERNAME"
    # The seats must boot in the same mode as the master: UEFI (GPT) or legacy BIOS (MBR).
    $fw = $env:firmware_type
    Write-Info "firmware boot mode: $(Format-Value $fw) (the seats must boot in the same mode)"
    if ($fw -eq 'UEFI') {
        # Debian's iPXE is not Secure Boot signed; seats may need Secure Boot off (not verified).
        try { Write-Info "Secure Boot on this machine: $(if (Confirm-SecureBootUEFI) { 'on' } else { 'off' })" }
        catch { Write-Info 'Secure Boot state could not be read' }
    }
}

# --- Step 2: BitLocker ----------------------------------------------------------------------
Invoke-Check 'BitLocker / device encryption on the system drive' {
    # An encrypted volume cannot be captured used-clusters-only, and its key is sealed to one TPM.
    $vol = Get-CimInstance -Namespace 'root\cimv2\Security\MicrosoftVolumeEncryption' -ClassName Win32_EncryptableVolume -Filter ("DriveLetter = '{0}'" -f $env:SystemDrive) -ErrorAction SilentlyContinue
    if (-not $vol) { Write-Ok "no BitLocker information for $env:SystemDrive (BitLocker not present on this edition?)"; return }
    # GetConversionStatus: ConversionStatus 0 = fully decrypted.
    $conv = Invoke-CimMethod -InputObject $vol -MethodName GetConversionStatus
    if ([int]$conv.ConversionStatus -eq 0) { Write-Ok "$env:SystemDrive is fully decrypted" }
    else { Write-Warn "$env:SystemDrive is encrypted or converting (ConversionStatus $($conv.ConversionStatus), $($conv.EncryptionPercentage)%): run 'manage-bde -off $env:SystemDrive' and wait until it is fully decrypted" }
}

# --- Step 4: Fast Startup and hibernation ---------------------------------------------------
Invoke-Check 'Fast Startup and hibernation' {
    # HiberbootEnabled = 1 (or missing, which means the default, on) leaves NTFS hibernated at shutdown.
    $hb = Get-RegValue 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager\Power' 'HiberbootEnabled'
    if ($null -ne $hb -and [int]$hb -eq 0) { Write-Ok 'Fast Startup is off (HiberbootEnabled = 0)' }
    else { Write-Warn "Fast Startup is on (HiberbootEnabled = $(Format-Value $hb)): run prepare-master.ps1" }
    $he = Get-RegValue 'HKLM:\SYSTEM\CurrentControlSet\Control\Power' 'HibernateEnabled'
    $hiberfil = Join-Path $env:SystemDrive 'hiberfil.sys'
    if ($null -ne $he -and [int]$he -eq 0 -and -not (Test-Path -LiteralPath $hiberfil)) { Write-Ok 'hibernation is off and hiberfil.sys is absent' }
    else { Write-Warn "hibernation may be on (HibernateEnabled = $(Format-Value $he), hiberfil.sys present: $(Test-Path -LiteralPath $hiberfil)): run prepare-master.ps1" }
    # The NTFS dirty bit, as fsutil prints it (its wording follows the Windows display language).
    $dirty = (& fsutil.exe dirty query $env:SystemDrive 2>&1 | Out-String).Trim()
    Write-Info "fsutil dirty query ${env:SystemDrive}: $dirty"
}

# --- Step 5: page file ----------------------------------------------------------------------
Invoke-Check 'Page file' {
    $mm = 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management'
    $pf = @(Get-RegValue $mm 'PagingFiles' | Where-Object { $_ })
    $cs = Get-CimInstance -ClassName Win32_ComputerSystem
    $ramGB = [math]::Round($cs.TotalPhysicalMemory / 1073741824, 1)   # bytes per GiB
    Write-Info "RAM: $ramGB GB"
    if ($cs.AutomaticManagedPagefile -or ($pf -match '^\?:')) {
        Write-Warn 'the page file is managed by Windows: run prepare-master.ps1 (no page file, or -PageFileMB for a fixed size)'
    } elseif ($pf.Count -eq 0) {
        Write-Ok 'no page file configured'
        if ($ramGB -lt 6) { Write-Warn "only $ramGB GB of RAM and no page file: consider prepare-master.ps1 -PageFileMB 2048" }
    } else {
        # "path initial maximum": equal sizes mean a fixed file that never grows.
        foreach ($line in $pf) {
            $parts = $line -split '\s+'
            if ($parts.Count -ge 3 -and $parts[1] -eq $parts[2] -and $parts[1] -ne '0') { Write-Ok "fixed page file: $line" }
            else { Write-Warn "page file not of fixed size: '$line' (use prepare-master.ps1 -PageFileMB N)" }
        }
    }
    # What is in use right now (changes to PagingFiles only apply after a restart).
    $usage = @(Get-CimInstance -ClassName Win32_PageFileUsage)
    if ($usage.Count -eq 0) { Write-Info 'no page file in use now' }
    foreach ($u in $usage) { Write-Info "page file in use now: $($u.Name), $($u.AllocatedBaseSize) MB" }
}

# --- Step 3: NIC driver and WFP lightweight filter -------------------------------------------
Invoke-Check 'Wired NIC: boot-start driver and WFP Lightweight Filter (KB976042)' {
    $adapters = @(Get-NetAdapter -Physical | Where-Object { $_.PhysicalMediaType -eq '802.3' })
    if ($adapters.Count -eq 0) { Write-Warn 'no wired physical network adapter found' }
    if ($adapters.Count -gt 1) { Write-Info "$($adapters.Count) wired adapters: only the one the seats boot from is described to Windows; disable the others in the BIOS if possible" }
    foreach ($a in $adapters) {
        Write-Info "adapter '$($a.Name)': $($a.InterfaceDescription), MAC $($a.MacAddress), driver $($a.DriverVersion) ($($a.DriverDate))"
        $wmi = Get-CimInstance -ClassName Win32_NetworkAdapter -Filter ("InterfaceIndex = {0}" -f $a.InterfaceIndex)
        $svcName = if ($wmi) { [string]$wmi.ServiceName } else { $null }
        if (-not $svcName) { Write-Warn "  cannot find the driver service of '$($a.Name)'" }
        else {
            $svcKey = "HKLM:\SYSTEM\CurrentControlSet\Services\$svcName"
            $start = Get-RegValue $svcKey 'Start'
            $flags = Get-RegValue $svcKey 'BootFlags'
            $flagsText = if ($null -eq $flags) { 'not set' } else { '0x{0:X}' -f [int]$flags }
            # Start = 0 is boot-start; BootFlags bit 0x1 promotes the driver to boot-start on a network boot.
            if (($null -ne $start -and [int]$start -eq 0) -or ($null -ne $flags -and ([int]$flags -band 1) -eq 1)) {
                Write-Ok "  driver service '$svcName': Start = $(Format-Value $start), BootFlags = $flagsText"
            } else {
                Write-Warn "  driver service '$svcName': Start = $(Format-Value $start), BootFlags = ${flagsText}: not boot-start on a network boot (prepare-master.ps1 -SetNicBootFlags)"
            }
        }
        # Any enabled ms_wfplwf* binding on a wired NIC can stop an iSCSI-booted Windows with 0x7B.
        $bound = @(Get-NetAdapterBinding -Name $a.Name -AllBindings | Where-Object { $_.ComponentID -like 'ms_wfplwf*' -and $_.Enabled })
        if ($bound.Count -eq 0) { Write-Ok "  no WFP Lightweight Filter bound to '$($a.Name)'" }
        foreach ($b in $bound) { Write-Warn "  $($b.ComponentID) ($($b.DisplayName)) is bound to '$($a.Name)': run prepare-master.ps1" }
    }
    $iStart = Get-RegValue 'HKLM:\SYSTEM\CurrentControlSet\Services\iScsiPrt' 'Start'
    $iFlags = Get-RegValue 'HKLM:\SYSTEM\CurrentControlSet\Services\iScsiPrt' 'BootFlags'
    $iFlagsText = if ($null -eq $iFlags) { 'not set' } else { '0x{0:X}' -f [int]$iFlags }
    if (($null -ne $iStart -and [int]$iStart -eq 0) -or ($null -ne $iFlags -and ([int]$iFlags -band 1) -eq 1)) { Write-Ok "iScsiPrt: Start = $(Format-Value $iStart), BootFlags = $iFlagsText" }
    else { Write-Warn "iScsiPrt: Start = $(Format-Value $iStart), BootFlags = ${iFlagsText}: prepare-master.ps1 -SetNicBootFlags" }
}

# --- Step 7: browser password managers ---------------------------------------------------------
Invoke-Check 'Browser password managers (policy PasswordManagerEnabled = 0)' {
    # Chrome and Edge: documented keys; a missing or non-zero value is a warning.
    foreach ($k in @('HKLM:\SOFTWARE\Policies\Google\Chrome', 'HKLM:\SOFTWARE\Policies\Microsoft\Edge')) {
        $v = Get-RegValue $k 'PasswordManagerEnabled'
        if ($null -ne $v -and [int]$v -eq 0) { Write-Ok "$k\PasswordManagerEnabled = 0" }
        else { Write-Warn "$k\PasswordManagerEnabled = $(Format-Value $v): run prepare-master.ps1" }
    }
    # Cốc Cốc: the right key is not documented; all three field forms are expected (see README step 7).
    foreach ($k in @('HKLM:\SOFTWARE\Policies\CocCoc\Browser', 'HKLM:\SOFTWARE\Policies\CocCoc\CocCoc', 'HKLM:\SOFTWARE\Policies\CocCoc')) {
        $v = Get-RegValue $k 'PasswordManagerEnabled'
        if ($null -ne $v -and [int]$v -eq 0) { Write-Ok "$k\PasswordManagerEnabled = 0 (uncertain key form)" }
        else { Write-Warn "$k\PasswordManagerEnabled = $(Format-Value $v) (uncertain key form): run prepare-master.ps1" }
    }
    Write-Info 'confirm in each browser: chrome://policy, edge://policy, coccoc://policy'
}

# --- Step 8: Wi-Fi ---------------------------------------------------------------------------------
Invoke-Check 'Wi-Fi' {
    # Profile files are counted on disk, which works whether or not WlanSvc runs.
    $profileDir = Join-Path $env:ProgramData 'Microsoft\Wlansvc\Profiles\Interfaces'
    $profiles = @(Get-ChildItem -LiteralPath $profileDir -Filter '*.xml' -Recurse -ErrorAction SilentlyContinue)
    if ($profiles.Count -eq 0) { Write-Ok 'no saved Wi-Fi profiles' }
    else { Write-Warn "$($profiles.Count) saved Wi-Fi profile(s): run prepare-master.ps1" }
    $svc = Get-Service -Name 'WlanSvc' -ErrorAction SilentlyContinue
    if (-not $svc) { Write-Ok 'WLAN AutoConfig (WlanSvc) is not installed' }
    elseif ($svc.StartType -eq 'Disabled' -and $svc.Status -eq 'Stopped') { Write-Ok 'WLAN AutoConfig (WlanSvc) is disabled and stopped' }
    else { Write-Warn "WLAN AutoConfig (WlanSvc) is $($svc.Status), startup $($svc.StartType): run prepare-master.ps1" }
}

# --- Step 6: local accounts ----------------------------------------------------------------------
Invoke-Check 'Local accounts' {
    # Administrators found by its well-known SID, whatever the display language.
    $adminSid = New-Object Security.Principal.SecurityIdentifier('S-1-5-32-544')
    $members = @()
    try {
        $members = @(Get-LocalGroupMember -SID $adminSid | ForEach-Object { "$($_.Name) ($($_.ObjectClass), $($_.PrincipalSource))" })
    } catch {
        # Get-LocalGroupMember fails on groups holding orphaned SIDs; read the group through ADSI instead.
        $groupName = $adminSid.Translate([Security.Principal.NTAccount]).Value.Split('\')[-1]
        $group = [ADSI]"WinNT://$env:COMPUTERNAME/$groupName,group"
        $members = @($group.psbase.Invoke('Members') | ForEach-Object { $_.GetType().InvokeMember('ADsPath', 'GetProperty', $null, $_, $null) })
    }
    foreach ($m in $members) { Write-Info "Administrators: $m" }
    if ($members.Count -gt 1) { Write-Warn "$($members.Count) members in Administrators: staff must be standard users, one admin account (the IT officer's) at most" }
    else { Write-Ok "$($members.Count) member(s) in Administrators" }
    # Every enabled local user, so the officer sees who exists on every seat of the room.
    foreach ($u in @(Get-LocalUser | Where-Object { $_.Enabled })) {
        Write-Info "enabled local user: $($u.Name)$(if ($u.SID.Value -like 'S-1-5-21-*-500') { ' (built-in Administrator)' })"
        if ($u.SID.Value -like 'S-1-5-21-*-500') { Write-Warn "the built-in account '$($u.Name)' is enabled: disable it unless it is the officer's only admin account" }
    }
}

# --- Step 9: activation ----------------------------------------------------------------------------
Invoke-Check 'Windows activation (KMS)' {
    # 55c92734-... is the application id of Windows in the Software Protection Platform.
    $products = @(Get-CimInstance -ClassName SoftwareLicensingProduct -Filter "ApplicationID = '55c92734-d682-4d71-983e-d6ec3f16059f' AND PartialProductKey IS NOT NULL")
    if ($products.Count -eq 0) { Write-Warn 'no Windows product key installed' }
    # LicenseStatus values of SoftwareLicensingProduct; 1 = licensed (activated).
    $statusNames = @{ 0 = 'unlicensed'; 1 = 'licensed'; 2 = 'out-of-box grace'; 3 = 'out-of-tolerance grace'; 4 = 'non-genuine grace'; 5 = 'notification'; 6 = 'extended grace' }
    foreach ($p in $products) {
        $status = $statusNames[[int]$p.LicenseStatus]
        Write-Info "$($p.Name): $($p.Description), status $status, grace minutes left $($p.GracePeriodRemaining)"
        if ($p.Description -notmatch 'KMSCLIENT') { Write-Warn 'not a KMS client key (MAK or retail activation does not fit a shared image): see README step 9' }
        elseif ([int]$p.LicenseStatus -ne 1) { Write-Warn 'KMS client not activated yet: check the KMS host (slmgr /dlv)' }
        else { Write-Ok 'KMS client, activated' }
    }
    $sls = Get-CimInstance -ClassName SoftwareLicensingService
    Write-Info "KMS host set by hand: $(Format-Value $sls.KeyManagementServiceMachine); discovered: $(Format-Value $sls.DiscoveredKeyManagementServiceMachineName); client machine id (CMID, shared by every seat): $($sls.ClientMachineID)"
}

# --- Step 13: Windows Update policies --------------------------------------------------------------
Invoke-Check 'Windows Update policies (recommended, not set by prepare-master.ps1)' {
    $wu = 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate'
    $noAuto = Get-RegValue "$wu\AU" 'NoAutoUpdate'
    $noDrivers = Get-RegValue $wu 'ExcludeWUDriversInQualityUpdate'
    # Seats that update themselves redo the same work into overlays that are thrown away at reset.
    if ($null -ne $noAuto -and [int]$noAuto -eq 1) { Write-Ok 'automatic updates off (NoAutoUpdate = 1); update in maintenance mode' }
    else { Write-Info "NoAutoUpdate = $(Format-Value $noAuto): consider turning automatic updates off in the image (README step 13)" }
    # Windows Update replacing the NIC driver could break network boot.
    if ($null -ne $noDrivers -and [int]$noDrivers -eq 1) { Write-Ok 'driver updates excluded from Windows Update' }
    else { Write-Info "ExcludeWUDriversInQualityUpdate = $(Format-Value $noDrivers): consider excluding drivers (README step 13)" }
}

# --- Summary ---------------------------------------------------------------------------------------
Write-Host ''
Write-Host ("Summary: {0} warning(s), {1} failure(s). Nothing was changed." -f $script:Warnings, $script:Failures)
if ($script:Warnings -gt 0 -or $script:Failures -gt 0) { exit 1 }
exit 0
