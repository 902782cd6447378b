# Makes a virtualenv relocatable (sourced by bin/compile): no path of the build directory may
# stay in it, because the slug runs elsewhere (/app in a container, a dyno's directory...).
relocate_venv() {
  local venv=$1 f first
  # Console scripts: `#!/build/path/.slipway/venv/bin/python` -> a /bin/sh trampoline that runs
  # the python next to the script (pip's own form for long paths; also what uv --relocatable
  # writes).
  for f in "$venv"/bin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    IFS= read -r first < "$f" || true
    case "$first" in
      "#!$venv/bin/python"*|"#!/bin/sh")
        if [ "$first" = "#!/bin/sh" ] && ! grep -q "$venv/bin/python" "$f"; then
          continue
        fi
        {
          printf '%s\n' '#!/bin/sh'
          printf '%s\n' "'''exec' \"\$(dirname -- \"\$(realpath -- \"\$0\")\")\"/'python' \"\$0\" \"\$@\""
          printf '%s\n' "' '''"
          if [ "$first" = "#!/bin/sh" ]; then
            # pip's long-path form: drop its own 3-line trampoline.
            tail -n +4 "$f"
          else
            tail -n +2 "$f"
          fi
        } > "$f.relocated"
        chmod --reference="$f" "$f.relocated"
        mv "$f.relocated" "$f"
        ;;
    esac
  done
  # Activation scripts hard-code the path; the dyno uses .profile.d instead.
  rm -f "$venv"/bin/activate "$venv"/bin/activate.* "$venv"/bin/activate_this.py \
    "$venv"/bin/Activate.ps1 "$venv"/bin/deactivate.bat "$venv"/bin/pydoc.bat
  # pyvenv.cfg's `command =` line records how it was created, build path included.
  if [ -f "$venv/pyvenv.cfg" ]; then
    grep -v '^command *=' "$venv/pyvenv.cfg" > "$venv/pyvenv.cfg.new" || true
    mv "$venv/pyvenv.cfg.new" "$venv/pyvenv.cfg"
  fi
  # Bytecode records its source path only for tracebacks (fixed up at import); anything else
  # that still names the build directory is reported.
  local left
  left=$(grep -rlI --exclude='*.pyc' -F "$venv" "$venv" 2>/dev/null | head -5 || true)
  if [ -n "$left" ]; then
    echo " !     These files still name the build directory and may not work once relocated:"
    echo "$left" | sed 's/^/       /'
  fi
}
