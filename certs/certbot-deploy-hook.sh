#!/bin/sh
# certbot deploy hook: copies a renewed certificate to where sluice reads it,
# with the modes the README's install steps give (chain 0644, key
# root:sluice 0640), then reloads sluice. Open connections and tunnels keep
# running; new TLS handshakes get the new certificate. A bad pair makes
# `systemctl reload` fail (sluice check runs first) and the old one keeps
# serving. Install it as root:
#   install -D -m 0755 certs/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/sluice.sh
# Each file is written beside its target and renamed over it, so a reload
# never reads half a file.
set -eu
dir=/etc/sluice/certs
install -o root -g root -m 0644 "$RENEWED_LINEAGE/fullchain.pem" "$dir/fullchain.pem.new"
install -o root -g sluice -m 0640 "$RENEWED_LINEAGE/privkey.pem" "$dir/privkey.pem.new"
mv -f "$dir/fullchain.pem.new" "$dir/fullchain.pem"
mv -f "$dir/privkey.pem.new" "$dir/privkey.pem"
systemctl reload sluice
