apt install ./target/debian/sluice_*.deb
