"""Media in and out: video files through ffmpeg, audio and spectrograms, face cropping, and
the audiovisual clips the models read."""
