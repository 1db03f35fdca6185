; Inno Setup script template for Atelier on Windows: installs the PyInstaller one-folder build.
;
; Build the folder first (python packaging\build.py, on Windows), then compile this script:
;   iscc /DSourceDir="C:\path\to\repo\dist\atelier" /DAppVersion=0.1.0 packaging\atelier.iss
; The installer (atelier-<version>-setup.exe) lands in dist\. Untested in this repository's CI (Linux only).

#ifndef SourceDir
  #define SourceDir "..\dist\atelier"
#endif
#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppName "Atelier"
#define AppExe "atelier.exe"

[Setup]
; A fixed AppId lets a newer installer upgrade an older installation in place; keep it across versions.
AppId={{6E3C8B0A-5D1F-4C57-9C2E-7A4B1F0D2E91}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=Atelier contributors
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
; Per-user install by default (no admin rights needed); the user may choose all users.
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
OutputDir=..\dist
OutputBaseFilename=atelier-{#AppVersion}-setup
; torch makes the folder large: LZMA2 in solid mode shrinks it most; DiskSpanning stays off (one file).
Compression=lzma2/max
SolidCompression=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
WizardStyle=modern
UninstallDisplayIcon={app}\{#AppExe}

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#AppExe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent
